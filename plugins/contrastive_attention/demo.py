"""``vlplugins demo --only contrastive_attention``: exactness and cost of the one-pass implementation.

There is no trained LLaVA offline, so accuracy cannot be measured here; the demo reports what can be checked on
random-weight tiny LLaVA / LLaVA-NeXT models: the one-pass output equals the naive two-pass reference (max |Δ logit|
and identical generated ids), λ = 1 equals the unmodified model, and the CPU generate latency of one-pass vs plain
SDPA vs the two-pass reference. The config is saved and reloaded with ``from_pretrained`` and the reloaded one is
what runs.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch

PLUGIN = "contrastive_attention"


def _latencies(fns: dict, repeats: int = 5) -> dict:
    """Median wall time of each callable; rounds interleave them so machine-load drift hits all alike."""
    for fn in fns.values():
        fn()  # warm-up
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def run_demo(workdir: Path) -> list:
    """Run the checks on tiny-llava and tiny-llava-next; returns ``DemoRow`` s (plugin = one-pass)."""
    from vlplugins.demo import DemoRow
    from vlplugins.hub import build_from_preset

    from .configuration import ContrastiveAttentionConfig
    from .generate import enable_contrastive_attention
    from .hooks import language_model
    from .reference import synthetic_inputs, two_pass_generate, two_pass_scale

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for preset in ("tiny-llava", "tiny-llava-next"):
        start = time.perf_counter()
        model = build_from_preset(preset)
        saved = ContrastiveAttentionConfig.from_preset(preset)
        saved.save_pretrained(workdir / f"{preset}-config")
        config = ContrastiveAttentionConfig.from_pretrained(workdir / f"{preset}-config")
        inputs = synthetic_inputs(model, batch_size=3, text_len=8)
        gen = dict(max_new_tokens=32, min_new_tokens=32, do_sample=False)
        with torch.no_grad():
            plain_logits = model(**inputs).logits
            with enable_contrastive_attention(model, config):
                one_logits = model(**inputs).logits
                one_ids = model.generate(**inputs, **gen)
            scale = two_pass_scale(model, inputs, config)["scale"]

            def hook(module, args):
                return (args[0] * scale.unsqueeze(-1), *args[1:])

            h = language_model(model).layers[config.review_layer].register_forward_pre_hook(hook)
            try:
                two_logits = model(**inputs).logits
            finally:
                h.remove()
            two_ids = two_pass_generate(model, inputs, config, **gen)
            unit = ContrastiveAttentionConfig(**{**config.to_dict(), "scale": 1.0})
            with enable_contrastive_attention(model, unit):
                unit_logits = model(**inputs).logits
        seconds = time.perf_counter() - start
        rows.append(DemoRow(PLUGIN, f"{preset} max|logit| one-pass vs two-pass",
                            (one_logits - two_logits).abs().max().item(), None, seconds))
        rows.append(DemoRow(PLUGIN, f"{preset} 32-token ids equal two-pass (1=yes)",
                            float(torch.equal(one_ids, two_ids)), None, seconds))
        rows.append(DemoRow(PLUGIN, f"{preset} max|logit| lambda=1 vs plain model",
                            (unit_logits - plain_logits).abs().max().item(), None, seconds))
        rows.append(DemoRow(PLUGIN, f"{preset} max|logit| effect lambda={config.scale}",
                            (one_logits - plain_logits).abs().max().item(), None, seconds))
        if preset == "tiny-llava":
            start = time.perf_counter()

            def one_pass():
                with enable_contrastive_attention(model, config):
                    model.generate(**inputs, **gen)

            with torch.no_grad():
                t = _latencies({"plain": lambda: model.generate(**inputs, **gen), "one": one_pass,
                                "two": lambda: two_pass_generate(model, inputs, config, **gen)})
            t_plain, t_one, t_two = t["plain"], t["one"], t["two"]
            seconds = time.perf_counter() - start
            rows.append(DemoRow(PLUGIN, "CPU generate s (bs3, 32 tok) one-pass vs plain SDPA", t_one, t_plain,
                                seconds))
            rows.append(DemoRow(PLUGIN, "CPU generate s (bs3, 32 tok) one-pass vs two-pass", t_one, t_two,
                                seconds))
    return rows
