"""Benchmark: generate latency (prefill, 32 new tokens) and peak memory of contrastive attention.

Three methods on the same model, inputs and run:

* ``plain``: the model's own SDPA attention, no contrastive attention (the baseline);
* ``one_pass``: :func:`vlplugins.contrastive_attention.enable_contrastive_attention` (this plugin);
* ``two_pass``: the naive reference (eager prefill with ``output_attentions=True``, then a second prefill with the
  scale hook), :func:`vlplugins.contrastive_attention.reference.two_pass_generate`.

CPU, tiny preset by default::

    python benchmarks/contrastive_attention.py
GPU, LLaVA-1.5-7B architecture with random weights::

    python benchmarks/contrastive_attention.py --preset llava-1.5-7b --device cuda --dtype bf16 --batch-size 1 8

Prints one line per figure: ``name ratio=... baseline=... plugin=...`` (ratio = plugin / baseline; the baseline is
plain SDPA measured in the same run). Peak memory is ``torch.cuda.max_memory_allocated`` on GPU and, on CPU, the
peak resident set size of a child process that builds the model and runs only that method.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import DTYPES, sync  # noqa: E402  (shared timing helpers of benchmarks/)

METHODS = ("plain", "one_pass", "two_pass")


def make_inputs(model, batch_size: int, text_len: int, device, dtype, seed: int = 0):
    """Left-padded batch with random pixels and the model's image-token count (see ``synthetic_inputs``)."""
    from vlplugins.contrastive_attention.reference import synthetic_inputs

    return synthetic_inputs(model, batch_size=batch_size, text_len=text_len, device=device, dtype=dtype, seed=seed)


def run_method(method: str, model, inputs, config, max_new_tokens: int):
    """One ``generate`` call of ``method``; returns the generated ids."""
    from vlplugins.contrastive_attention import enable_contrastive_attention
    from vlplugins.contrastive_attention.reference import two_pass_generate

    kwargs = dict(max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens, do_sample=False)
    with torch.no_grad():
        if method == "plain":
            return model.generate(**inputs, **kwargs)
        if method == "one_pass":
            with enable_contrastive_attention(model, config):
                return model.generate(**inputs, **kwargs)
        return two_pass_generate(model, inputs, config, **kwargs)


def build(args):
    from vlplugins.contrastive_attention import ContrastiveAttentionConfig
    from vlplugins.hub import build_from_preset

    model = build_from_preset(args.preset, dtype=DTYPES[args.dtype], device=args.device, attn_implementation="sdpa")
    return model, ContrastiveAttentionConfig.from_preset(args.preset)


def child_peak_rss(args, method: str, batch_size: int) -> float:
    """CPU peak memory (MiB): max RSS of a child process that runs only ``method``."""
    cmd = [sys.executable, os.path.abspath(__file__), "--preset", args.preset, "--device", args.device,
           "--dtype", args.dtype, "--text-len", str(args.text_len), "--new-tokens", str(args.new_tokens),
           "--threads", str(args.threads), "--_child", method, "--batch-size", str(batch_size)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
    return json.loads(out)["max_rss_mib"]


def _child(args) -> None:
    model, config = build(args)
    inputs = make_inputs(model, args.batch_size[0], args.text_len, args.device, DTYPES[args.dtype])
    run_method(args._child, model, inputs, config, args.new_tokens)
    print(json.dumps({"max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def line(name: str, baseline: float, plugin: float, unit: str) -> str:
    return f"{name} ratio={plugin / baseline:.3f} baseline={baseline:.4g}{unit} plugin={plugin:.4g}{unit}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="tiny-llava")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    parser.add_argument("--batch-size", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--text-len", type=int, default=16, help="text tokens after the image")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="CPU intra-op threads")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory figures")
    parser.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args._child:
        _child(args)
        return 0
    model, config = build(args)
    cuda = torch.device(args.device).type == "cuda"
    print(f"# preset={args.preset} device={args.device} dtype={args.dtype} layers k={config.post_integration_layer} "
          f"r={config.review_layer} C={config.candidate_layers} torch={torch.__version__}"
          + (f" gpu={torch.cuda.get_device_name()}" if cuda else ""))
    for bs in args.batch_size:
        inputs = make_inputs(model, bs, args.text_len, args.device, DTYPES[args.dtype])
        n_img = int((inputs["input_ids"][0] == model.config.image_token_id).sum())
        print(f"# batch={bs} prompt_len={inputs['input_ids'].shape[1]} image_tokens={n_img}")
        # equality of the three methods on this input (greedy ids)
        ids = {m: run_method(m, model, inputs, config, 8) for m in METHODS}
        print(f"# one_pass==two_pass ids: {torch.equal(ids['one_pass'], ids['two_pass'])}")
        res = {}
        # rounds interleave the methods, so machine-load drift hits all of them alike; the median is reported
        for phase, n_new in (("prefill", 1), ("total", args.new_tokens)):
            times = {m: [] for m in METHODS}
            for m in METHODS:
                run_method(m, model, inputs, config, n_new)  # warm-up
            for _ in range(args.repeats):
                for m in METHODS:
                    sync(torch.device(args.device))
                    start = time.perf_counter()
                    run_method(m, model, inputs, config, n_new)
                    sync(torch.device(args.device))
                    times[m].append(time.perf_counter() - start)
            for m in METHODS:
                res[(m, phase)] = statistics.median(times[m])
        for m in METHODS:
            if not args.no_memory:
                if cuda:
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
                    run_method(m, model, inputs, config, args.new_tokens)
                    res[(m, "mem")] = torch.cuda.max_memory_allocated() / 2 ** 20
                else:
                    res[(m, "mem")] = child_peak_rss(args, m, bs)
        for m in ("one_pass", "two_pass"):
            print(line(f"{m}_prefill_latency_bs{bs}", res[("plain", "prefill")], res[(m, "prefill")], "s"))
            print(line(f"{m}_total_latency_{args.new_tokens}tok_bs{bs}", res[("plain", "total")],
                       res[(m, "total")], "s"))
            if not args.no_memory:
                print(line(f"{m}_peak_memory_bs{bs}", res[("plain", "mem")], res[(m, "mem")], "MiB"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
