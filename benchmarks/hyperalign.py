"""Scoring throughput of HyperAlign vs the bare CLIP forward on the same batch.

Both sides get the same preprocessed batch (``pixel_values`` + token ids); "bare" is the two CLIP towers plus the
cosine, "plugin" the full HyperAlign forward (towers + adapters + Lorentz geometry + regressor). A second line
times :meth:`HyperAlignModel.score` end to end (uint8 images in, preprocessing + tokenisation included) against the
same bare forward. Random weights (presets), so any architecture can be timed offline.

    python benchmarks/hyperalign.py                                  # CPU, tiny-clip
    python benchmarks/hyperalign.py --preset clip-vit-base-patch16 --device cuda --dtype fp16 --batch-size 64

Prints ``name ratio=... baseline=... plugin=...`` (throughput in pairs/s; ratio = plugin / baseline).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import DTYPES, time_fn  # noqa: E402  (shared timing helpers of benchmarks/)

def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="tiny-clip")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--iters", type=int, default=20, help="calls per timing round")
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds; the median round is reported")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (torch.set_num_threads)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from vlplugins.data import ShapesWorld
    from vlplugins.hub import build_from_preset
    from vlplugins.hyperalign import HyperAlignConfig, HyperAlignModel
    from vlplugins.hyperalign.processing import tokenize

    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    clip = build_from_preset(args.preset, dtype=dtype, device=device)
    torch.manual_seed(0)
    model = HyperAlignModel(HyperAlignConfig(backbone_id=f"preset:{args.preset}"), base_model=clip).to(device).eval()
    size, B = model.config.image_size, args.batch_size
    world = ShapesWorld(image_size=32, seed=0)
    prompts = [world.alignment_pair(i)["prompt"] for i in range(B)]
    text = {k: v.to(device) for k, v in tokenize(prompts, 77).items()}
    g = torch.Generator().manual_seed(0)
    images_u8 = torch.randint(0, 256, (B, 3, size, size), generator=g, dtype=torch.uint8).to(device)
    pixel_values = ((images_u8.float() / 255 - 0.45) / 0.27).to(dtype)

    @torch.no_grad()
    def bare():
        fi = clip.get_image_features(pixel_values=pixel_values).pooler_output
        ft = clip.get_text_features(**text).pooler_output
        return F.cosine_similarity(fi, ft, dim=-1)

    @torch.no_grad()
    def plugin():
        return model(pixel_values=pixel_values, **text).scores

    def score_e2e():
        return model.score(images_u8, prompts, batch_size=B, autocast=False)

    for fn in (bare, plugin, score_e2e):  # warm-up (kernels, allocator, tokenizer cache)
        for _ in range(3):
            fn()
    times = {"bare": [], "plugin": [], "score": []}
    for _ in range(args.rounds):
        times["bare"].append(time_fn(bare, device, warmup=0, repeats=args.iters))
        times["plugin"].append(time_fn(plugin, device, warmup=0, repeats=args.iters))
        times["score"].append(time_fn(score_e2e, device, warmup=0, repeats=max(1, args.iters // 2)))
    tput = {k: B / statistics.median(v) for k, v in times.items()}
    tag = f"{args.preset} {args.device} {args.dtype} batch={B}"
    print(f"hyperalign_forward_throughput[{tag}] ratio={tput['plugin'] / tput['bare']:.4f} "
          f"baseline={tput['bare']:.1f} plugin={tput['plugin']:.1f}")
    print(f"hyperalign_score_e2e_throughput[{tag}] ratio={tput['score'] / tput['bare']:.4f} "
          f"baseline={tput['bare']:.1f} plugin={tput['score']:.1f}")


if __name__ == "__main__":
    main()
