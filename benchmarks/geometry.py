"""Forward+backward throughput of vlplugins.geometry vs geoopt on the same tensors.

Prints one line per figure, ``name ratio=<vlplugins/geoopt throughput> baseline=<geoopt> plugin=<vlplugins>``
(throughput in rows per second; ratio > 1 means vlplugins is faster).

    python benchmarks/geometry.py                      # CPU, float32
    python benchmarks/geometry.py --device cuda --dtype fp32 --rows 65536 --dim 256
"""

from __future__ import annotations

import argparse
import os
import sys

import geoopt
import torch

sys.path.insert(0, os.path.dirname(__file__))
from _common import DTYPES, report, time_fn  # noqa: E402

from vlplugins.geometry import lorentz, poincare  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "fp64"])
    ap.add_argument("--rows", type=int, default=8192, help="batch of points for expmap0")
    ap.add_argument("--pairs", type=int, default=512, help="n = m for pairwise_dist (n x m distances)")
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--curvature", type=float, default=1.0)
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    dtype = torch.float64 if args.dtype == "fp64" else DTYPES[args.dtype]
    c = args.curvature
    g = torch.Generator(device="cpu").manual_seed(0)
    v = (torch.randn(args.rows, args.dim, generator=g) * 0.05).to(device=device, dtype=dtype).requires_grad_(True)
    x = (torch.randn(args.pairs, args.dim, generator=g) * 0.05).to(device=device, dtype=dtype)
    y = (torch.randn(args.pairs, args.dim, generator=g) * 0.05).to(device=device, dtype=dtype)
    ball = geoopt.PoincareBall(c=torch.tensor(c, dtype=dtype, device=device))
    lz = geoopt.Lorentz(k=torch.tensor(1.0 / c, dtype=dtype, device=device))

    def fb(fn):
        def run():
            out = fn()
            out.sum().backward()
        return run

    # expmap0 (Poincaré)
    t_ref = time_fn(fb(lambda: ball.expmap0(v)), device, repeats=args.repeats)
    t_our = time_fn(fb(lambda: poincare.expmap0(v, c)), device, repeats=args.repeats)
    report(f"poincare.expmap0 fwd+bwd rows/s [{args.rows}x{args.dim} {args.dtype} {device.type}]",
           args.rows / t_ref, args.rows / t_our)

    # pairwise_dist (Poincaré): geoopt broadcasts Möbius addition over n x m x dim.
    px = poincare.expmap0(x, c).detach().requires_grad_(True)
    py = poincare.expmap0(y, c).detach().requires_grad_(True)
    t_ref = time_fn(fb(lambda: ball.dist(px[:, None, :], py[None, :, :])), device, repeats=args.repeats)
    t_our = time_fn(fb(lambda: poincare.pairwise_dist(px, py, c)), device, repeats=args.repeats)
    n2 = args.pairs * args.pairs
    report(f"poincare.pairwise_dist fwd+bwd pairs/s [{args.pairs}x{args.pairs}x{args.dim}]", n2 / t_ref, n2 / t_our)

    # Lorentz: geoopt stores the time component, so its inputs are the full (dim + 1) coordinates.
    t_ref = time_fn(fb(lambda: lz.expmap0(torch.nn.functional.pad(v, (1, 0)))), device, repeats=args.repeats)
    t_our = time_fn(fb(lambda: lorentz.exp_map0(v, c)), device, repeats=args.repeats)
    report(f"lorentz.exp_map0 fwd+bwd rows/s [{args.rows}x{args.dim}]", args.rows / t_ref, args.rows / t_our)

    lx = lorentz.exp_map0(x, c).detach().requires_grad_(True)
    ly = lorentz.exp_map0(y, c).detach().requires_grad_(True)

    def full(s):
        return torch.cat([lorentz.time_component(s, c).unsqueeze(-1), s], -1)

    t_ref = time_fn(fb(lambda: lz.dist(full(lx)[:, None, :], full(ly)[None, :, :])), device, repeats=args.repeats)
    t_our = time_fn(fb(lambda: lorentz.pairwise_dist(lx, ly, c)), device, repeats=args.repeats)
    report(f"lorentz.pairwise_dist fwd+bwd pairs/s [{args.pairs}x{args.pairs}x{args.dim}]", n2 / t_ref, n2 / t_our)
    return 0


if __name__ == "__main__":
    sys.exit(main())
