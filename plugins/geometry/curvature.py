"""Learnable curvature, MERU style: stored as ``log c``, clamped on every use."""

from __future__ import annotations

import math

import torch


def clamped_curvature(log_c: torch.Tensor, c_init: float, factor: float = 10.0) -> torch.Tensor:
    """Curvature magnitude ``c = exp(clamp(log_c, log(c_init / factor), log(c_init * factor)))``.

    MERU keeps ``log c`` as the parameter (so ``c > 0`` by construction) and clamps it on every forward to within a
    factor of its initial value, so that a learnable curvature cannot run away early in training.

    Args:
        log_c: 0-dim tensor, the stored ``log c`` (gradients flow through the clamp inside its range).
        c_init: initial curvature magnitude ``c0 > 0``.
        factor: allowed ratio ``>= 1`` to ``c0`` in either direction (MERU: 10).

    Returns:
        0-dim tensor ``c`` in ``[c_init / factor, c_init * factor]``.
    """
    if not (c_init > 0 and factor >= 1):
        raise ValueError(f"c_init, factor: expected c_init > 0 and factor >= 1, got {c_init!r}, {factor!r}")
    log_c0, log_f = math.log(c_init), math.log(factor)
    return log_c.clamp(log_c0 - log_f, log_c0 + log_f).exp()
