"""Helpers shared by the benchmark scripts: timing with warm-up, peak memory, the one-line result format."""

from __future__ import annotations

import time
from typing import Callable, Optional

import torch

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def sync(device: torch.device) -> None:
    """Wait for queued kernels so wall-clock timings measure the work, not the launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(fn: Callable[[], object], device: torch.device, warmup: int = 3, repeats: int = 10) -> float:
    """Median wall-clock seconds of ``fn()`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2]


def peak_memory(fn: Callable[[], object], device: torch.device) -> Optional[int]:
    """Peak CUDA memory in bytes allocated during ``fn()`` (``None`` on CPU, where torch does not track it)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device)


def report(name: str, baseline: float, plugin: float, unit: str = "") -> str:
    """Print and return ``name ratio=plugin/baseline baseline=... plugin=...``."""
    ratio = plugin / baseline if baseline else float("nan")
    line = f"{name} ratio={ratio:.4f} baseline={baseline:.6g}{unit} plugin={plugin:.6g}{unit}"
    print(line, flush=True)
    return line
