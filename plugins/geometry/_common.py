"""Shared numerics for the hyperbolic geometry modules.

Every public geometry function runs through :func:`hyperbolic_op`, which
(1) switches autocast off locally, (2) upcasts tensors to float32 (float64 stays
float64), (3) casts the result back to the input dtype. Keeping this in one place
is what makes "no NaN/inf in fp16/bf16" a property of the whole module rather
than of each function.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Union

import torch

Curvature = Union[float, torch.Tensor]

# Machine-meaningful epsilons of the *compute* dtype. A bound such as 1 + 1e-8 rounds to 1 in
# float32 (eps 1.19e-7), so every clamp below uses a value that survives rounding.
_EPS = {torch.float32: 1e-6, torch.float64: 1e-12}
# Smallest norm we divide by: well above float32's subnormal range so 1/norm stays finite,
# small enough that it only ever triggers at (numerically) the origin.
_MIN_NORM = {torch.float32: 1e-15, torch.float64: 1e-30}


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; everything else (fp16, bf16, fp32) is computed in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def eps_for(dtype: torch.dtype) -> float:
    """Clamp epsilon that is representable next to 1.0 in the compute dtype ``dtype``."""
    return _EPS[dtype]


def min_norm_for(dtype: torch.dtype) -> float:
    """Lower bound for norms used as divisors in the compute dtype ``dtype``."""
    return _MIN_NORM[dtype]


def check_curvature(c: Curvature) -> None:
    """Raise ``ValueError`` unless ``c`` is a positive finite curvature magnitude.

    Python numbers and CPU tensors are checked. CUDA tensors are not inspected, because
    reading their value would synchronise the device on every call; plugins parameterise a
    learnable curvature as ``exp(log_c)``, which is positive by construction.
    """
    if isinstance(c, torch.Tensor):
        if c.device.type != "cpu":
            return
        if c.numel() == 0 or not bool(torch.isfinite(c).all()) or bool((c <= 0).any()):
            raise ValueError(f"c: expected a positive finite curvature magnitude, got {c!r}")
        return
    if not isinstance(c, (int, float)) or not math.isfinite(c) or c <= 0:
        raise ValueError(f"c: expected a positive finite curvature magnitude (float or tensor), got {c!r}")


def sqnorm(x: torch.Tensor, min_norm: float = 0.0) -> torch.Tensor:
    """Squared Euclidean norm over the last dim, keepdim; clamped below by ``min_norm**2``.

    Clamping the *square* before any sqrt keeps the gradient of ``sqrt`` finite at the origin.
    """
    s = (x * x).sum(dim=-1, keepdim=True)
    return s.clamp_min(min_norm * min_norm) if min_norm > 0 else s


def norm(x: torch.Tensor, min_norm: float) -> torch.Tensor:
    """Euclidean norm over the last dim (keepdim) with a finite gradient at 0."""
    return sqnorm(x, min_norm).sqrt()


def as_curvature(c: Curvature, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``c`` as a tensor of the compute dtype on ``device`` (learnable tensors keep their graph)."""
    if isinstance(c, torch.Tensor):
        return c.to(dtype=dtype, device=device)
    return torch.tensor(float(c), dtype=dtype, device=device)


def hyperbolic_op(num_points: int) -> Callable:
    """Decorator factory for public geometry functions ``fn(p_1, ..., p_n, c, **kw)``.

    The first ``num_points`` arguments are tensors, the next (positional or keyword) is the
    curvature magnitude ``c``. The wrapper validates ``c``, disables autocast, upcasts the point
    tensors to the compute dtype (float32, or float64 for float64 input), passes ``c`` as a
    tensor of that dtype plus ``out_dtype`` (the caller's dtype), and casts the result (a tensor
    or a tuple of tensors) back to ``out_dtype``.
    """

    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            points, rest = args[:num_points], args[num_points:]
            if len(points) < num_points:
                raise TypeError(f"{fn.__name__} expects {num_points} tensor argument(s)")
            if rest:
                c, rest = rest[0], rest[1:]
            else:
                c = kwargs.pop("c", 1.0)
            check_curvature(c)
            first = points[0]
            for i, p in enumerate(points):
                if not isinstance(p, torch.Tensor) or not p.dtype.is_floating_point:
                    raise ValueError(
                        f"{fn.__name__}: argument {i} expected a floating point tensor, got "
                        f"{type(p).__name__}{'' if not isinstance(p, torch.Tensor) else ' of dtype ' + str(p.dtype)}"
                    )
            out_dtype = first.dtype
            cdt = compute_dtype(out_dtype)
            with torch.autocast(device_type=first.device.type, enabled=False):
                cpoints = [p.to(cdt) for p in points]
                result = fn(*cpoints, as_curvature(c, cdt, first.device), *rest, out_dtype=out_dtype, **kwargs)
            if isinstance(result, tuple):
                return tuple(r.to(out_dtype) for r in result)
            return result.to(out_dtype)

        return wrapper

    return decorate


def max_finite_norm(out_dtype: torch.dtype) -> float:
    """Largest vector norm we let a result have in ``out_dtype`` so that squaring it in a
    float32 follow-up and casting it back never overflows (fp16 max is 65504)."""
    if out_dtype == torch.float16:
        return 2.0 ** 14
    return 2.0 ** 60 if out_dtype == torch.float64 else 2.0 ** 40
