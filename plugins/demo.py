"""The ``vlplugins demo`` runner: each plugin trains briefly on the shapes world against its baseline.

Each plugin contributes ``vlplugins.<plugin>.demo.run_demo(workdir: pathlib.Path) -> list[DemoRow]``: build
tiny models from ``hub_configs/``, train the plugin and its baseline with the same budget and seed, evaluate
both, save and reload the plugin with ``from_pretrained``, and return result rows. The runner prints one table.
"""

from __future__ import annotations

import importlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

DEMO_MODULES = (
    ("hyperbolic_blip2", "vlplugins.hyperbolic_blip2.demo"),
    ("creal", "vlplugins.creal.demo"),
    ("hyperalign", "vlplugins.hyperalign.demo"),
    ("contrastive_attention", "vlplugins.contrastive_attention.demo"),
)


@dataclass
class DemoRow:
    """One line of the demo table."""

    plugin: str
    metric: str
    plugin_value: float
    baseline_value: Optional[float]
    seconds: float


def format_table(rows: list[DemoRow]) -> str:
    """Fixed-width text table of ``rows``."""
    header = ("plugin", "metric", "plugin", "baseline", "seconds")
    cells = [header] + [
        (r.plugin, r.metric, f"{r.plugin_value:.4f}",
         "-" if r.baseline_value is None else f"{r.baseline_value:.4f}", f"{r.seconds:.1f}")
        for r in rows
    ]
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
    lines = ["  ".join(c[i].ljust(widths[i]) for i in range(len(header))) for c in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def run(workdir: Path, only: Optional[list[str]] = None) -> list[DemoRow]:
    """Run every available plugin demo (or those named in ``only``) and return all rows."""
    from tqdm.auto import tqdm

    workdir.mkdir(parents=True, exist_ok=True)
    selected = [(n, m) for n, m in DEMO_MODULES if not only or n in only]
    unknown = sorted(set(only or ()) - {n for n, _ in DEMO_MODULES})
    if unknown:
        raise ValueError(f"only: unknown plugin(s) {unknown}; expected names from {[n for n, _ in DEMO_MODULES]}")
    import torch

    # The demo models are tiny: their ops are dominated by per-op overhead, and a second intra-op thread only adds
    # contention (measured up to 10x slower training loops on a busy 2-core machine). Restored afterwards.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run_selected(workdir, selected, tqdm)
    finally:
        torch.set_num_threads(threads)


def _run_selected(workdir: Path, selected, tqdm) -> list[DemoRow]:
    rows: list[DemoRow] = []
    bar = tqdm(selected, desc="vlplugins demo", unit="plugin")
    for name, module_name in bar:
        bar.set_postfix_str(name)
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name == module_name:  # plugin not built yet: no row
                continue
            raise
        start = time.perf_counter()
        plugin_rows = module.run_demo(workdir / name)
        elapsed = time.perf_counter() - start
        for row in plugin_rows:
            if row.seconds <= 0:
                row.seconds = elapsed
        rows.extend(plugin_rows)
    return rows
