"""Benchmark of the hyperbolic BLIP-2 head against plain transformers ``Blip2ForImageTextRetrieval``.

Figures (one line each, ``name ratio=... baseline=... plugin=...``):

* ``forward_ms``: ITC forward of the hyperbolic model (exp map, radius, cosine over queries) vs the plain model's ITC
  forward (``use_image_text_matching_head=False``) on the same weights and inputs; ratio = plugin / baseline.
* ``head_overhead_ms``: the head alone (scale + exp map + radius + query-text similarity + max) vs the plain ITC
  forward; ratio = head / forward (target <= 1% at full size on GPU).
* ``peak_mem_mb``: peak memory allocated during one forward above what was allocated before it (CUDA:
  ``max_memory_allocated``; CPU: the running sum of the allocation events recorded by ``torch.profiler`` with
  ``profile_memory=True``).
* ``rank_ms``: ranking a ``num_images x 5*num_images`` similarity matrix into TR/IR ranks with
  :func:`vlplugins.hyperbolic_blip2.evaluation.retrieval_ranks` (chunked comparisons) vs a full ``argsort``
  baseline; ``rank_throughput`` in similarities per second.

CPU, tiny preset by default. Full size on GPU::

    python benchmarks/hyperbolic_blip2.py --preset blip2-itm-vit-g --device cuda --dtype bf16 --rank-images 5000
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import DTYPES, time_fn  # noqa: E402  (shared timing helpers of benchmarks/)

def build(args):
    """(plain base, hyperbolic model sharing its weights, inputs) on the requested device/dtype."""
    from vlplugins.hub import build_from_preset
    from vlplugins.hyperbolic_blip2 import HyperbolicBlip2ForImageTextRetrieval

    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    base = build_from_preset(args.preset, device=device, dtype=dtype).eval()
    model = HyperbolicBlip2ForImageTextRetrieval.from_base(base).eval()
    model.head.to(device)
    cfg = base.config
    size = cfg.vision_config.image_size
    g = torch.Generator().manual_seed(0)
    px = torch.randn(args.batch_size, 3, size, size, generator=g).to(device=device, dtype=dtype)
    vocab = cfg.qformer_config.vocab_size
    ids = torch.randint(5, vocab, (args.batch_size, args.text_len), generator=g)
    ids[:, 0], ids[:, -1] = 101 if vocab > 102 else 2, 102 if vocab > 102 else 3
    ids = ids.to(device)
    mask = torch.ones_like(ids)
    return base, model, (px, ids, mask), device


def peak_memory_mb(fn, device) -> float:
    """Peak memory (MB) allocated by ``fn()`` above the memory allocated before the call."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - start) / 2**20
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.time_range.start, e.cpu_memory_usage) for e in prof.events() if e.cpu_memory_usage)
    current = peak = 0
    for _, delta in events:
        current += delta
        peak = max(peak, current)
    return peak / 2**20


def rank_baseline(sim: torch.Tensor, text_image_ids: torch.Tensor):
    """Full-sort reference ranking (what a naive implementation does): argsort every row."""
    order = sim.argsort(dim=1, descending=True)  # (I, T)
    gt = text_image_ids[order] == torch.arange(sim.shape[0], device=sim.device)[:, None]
    tr = gt.float().argmax(dim=1)  # first ground-truth position
    order_t = sim.t().argsort(dim=1, descending=True)  # (T, I)
    ir = (order_t == text_image_ids[:, None]).float().argmax(dim=1)
    return tr, ir


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="tiny-blip2-retrieval")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="fp32")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--text-len", type=int, default=32)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rank-images", type=int, default=None, help="default: 5000 on CUDA, 1000 on CPU")
    p.add_argument("--captions-per-image", type=int, default=5)
    p.add_argument("--skip-memory", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from vlplugins.hyperbolic_blip2.evaluation import retrieval_ranks

    base, model, (px, ids, mask), device = build(args)
    with torch.no_grad():
        t_base = 1e3 * time_fn(lambda: base(pixel_values=px, input_ids=ids, attention_mask=mask,
                                    use_image_text_matching_head=False), device, warmup=args.warmup, repeats=args.repeats)
        t_plug = 1e3 * time_fn(lambda: model(pixel_values=px, input_ids=ids, attention_mask=mask), device, warmup=args.warmup, repeats=args.repeats)
        e = model._query_features(model._vision_states(px))
        u = model._text_features(ids, mask)

        def head_only():
            img = model.head.embed(e, "image")
            txt = model.head.embed(u, "text")
            return model.head.best_query(model.head.query_text_similarity(img.points, txt.points))

        t_head = 1e3 * time_fn(head_only, device, warmup=args.warmup, repeats=args.repeats)
    print(f"forward_ms ratio={t_plug / t_base:.4f} baseline={t_base:.3f} plugin={t_plug:.3f} "
          f"({args.preset}, {args.device}, {args.dtype}, batch {args.batch_size})")
    print(f"head_overhead_ms ratio={t_head / t_base:.4f} baseline={t_base:.3f} plugin={t_head:.3f}")
    if not args.skip_memory:
        with torch.no_grad():
            m_base = peak_memory_mb(lambda: base(pixel_values=px, input_ids=ids, attention_mask=mask,
                                                 use_image_text_matching_head=False), device)
            m_plug = peak_memory_mb(lambda: model(pixel_values=px, input_ids=ids, attention_mask=mask), device)
        ratio = m_plug / m_base if m_base > 0 else float("nan")
        print(f"peak_mem_mb ratio={ratio:.4f} baseline={m_base:.2f} plugin={m_plug:.2f}")

    n_img = args.rank_images or (5000 if device.type == "cuda" else 1000)
    n_txt = n_img * args.captions_per_image
    g = torch.Generator().manual_seed(0)
    sim = torch.randn(n_img, n_txt, generator=g).to(device)
    text_image_ids = torch.arange(n_img).repeat_interleave(args.captions_per_image).to(device)
    tr, ir = retrieval_ranks(sim, text_image_ids)
    tr_b, ir_b = rank_baseline(sim, text_image_ids)
    # Equal except where float32 ties occur (ours ranks ties in favour of the ground truth, argsort arbitrarily).
    if not (bool((tr <= tr_b).all()) and bool((ir <= ir_b).all())
            and float((tr != tr_b).float().mean()) < 1e-2 and float((ir != ir_b).float().mean()) < 1e-2):
        raise RuntimeError("retrieval_ranks disagrees with the argsort baseline")
    reps = max(1, args.repeats // 4)
    t_rank = 1e3 * time_fn(lambda: retrieval_ranks(sim, text_image_ids), device, warmup=1, repeats=reps)
    t_rank_b = 1e3 * time_fn(lambda: rank_baseline(sim, text_image_ids), device, warmup=1, repeats=reps)
    print(f"rank_ms ratio={t_rank / t_rank_b:.4f} baseline={t_rank_b:.3f} plugin={t_rank:.3f} "
          f"({n_img}x{n_txt})")
    print(f"rank_throughput ratio={t_rank_b / t_rank:.4f} baseline={n_img * n_txt / t_rank_b * 1e3:.3e} "
          f"plugin={n_img * n_txt / t_rank * 1e3:.3e} (similarities/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
