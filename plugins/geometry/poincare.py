"""Poincaré ball model of hyperbolic space (curvature ``-c``, ``c > 0``).

Ball ``D^n_c = {x in R^n : c |x|^2 < 1}``, conformal factor ``λ^c_x = 2 / (1 - c |x|^2)``.
Formulas follow Ganea et al. (2018), "Hyperbolic Neural Networks".

All functions are pure, batched over leading dimensions (the last dimension is the
embedding dimension), autograd-safe, computed in float32 at least (float64 stays float64) with
autocast disabled, and return the input dtype. ``c`` is a positive float or tensor.

Numerical range: ``tanh`` saturates to exactly 1 in float32 once ``sqrt(c)|v| > ~9``, so mapped
points are projected to norm ``(1 - eps)/sqrt(c)``; the exact hyperbolic radius of a mapped
tangent vector is available from the tangent vector itself via :func:`expmap0_radius`.
``logmap0(expmap0(v)) == v`` holds to 1e-5 relative for ``sqrt(c)|v| <= 3`` in float32 and
``sqrt(c)|v| <= 15`` in float64 (beyond that, the ball point no longer carries enough digits).
"""

from __future__ import annotations

import torch

from ._common import Curvature, hyperbolic_op, min_norm_for, norm, sqnorm

__all__ = [
    "mobius_add",
    "expmap0",
    "logmap0",
    "expmap",
    "dist",
    "pairwise_dist",
    "dist0",
    "expmap0_radius",
    "project",
    "max_norm",
]

# Distance of the projection bound from the boundary, as a fraction of the radius 1/sqrt(c).
# float32: 1e-5 keeps artanh(1 - 1e-5) = 6.1 finite with 2 significant bits to spare; float64: 1e-10.
_BALL_EPS = {torch.float32: 1e-5, torch.float64: 1e-10}


def _ball_eps(out_dtype: torch.dtype) -> float:
    # fp16/bf16 results must stay strictly inside the ball *after* rounding to their own
    # precision, so the bound is 4 ulps of 1.0 in that dtype (fp16: 3.9e-3, bf16: 3.1e-2).
    if out_dtype in _BALL_EPS:
        return _BALL_EPS[out_dtype]
    return max(_BALL_EPS[torch.float32], 4 * torch.finfo(out_dtype).eps)


def max_norm(c: Curvature, dtype: torch.dtype = torch.float32) -> float:
    """Largest Euclidean norm a point of ``dtype`` is allowed to have: ``(1 - eps(dtype)) / sqrt(c)``."""
    cv = float(c) if not isinstance(c, torch.Tensor) else float(c.detach().max())
    return (1.0 - _ball_eps(dtype)) / cv ** 0.5


def _project(x: torch.Tensor, c: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    mn = min_norm_for(x.dtype)
    n = norm(x, mn)
    bound = (1.0 - _ball_eps(out_dtype)) / c.sqrt()
    # Rescale only the points outside the bound; the ones inside are returned unchanged.
    return torch.where(n > bound, x / n * bound, x)


def _mobius_add(x: torch.Tensor, y: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    x2 = (x * x).sum(-1, keepdim=True)
    y2 = (y * y).sum(-1, keepdim=True)
    xy = (x * y).sum(-1, keepdim=True)
    num = (1 + 2 * c * xy + c * y2) * x + (1 - c * x2) * y
    den = 1 + 2 * c * xy + c * c * x2 * y2
    # den >= (1 - sqrt(c)|x| sqrt(c)|y|)^2 > 0 inside the ball; the floor only guards points that
    # were handed in on (or beyond) the boundary.
    return num / den.clamp_min(min_norm_for(x.dtype))


def _artanh(z: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    # artanh(1) = inf and its gradient 1/(1-z^2) blows up: clamp to the projection bound.
    bound = 1.0 - _ball_eps(out_dtype)
    return torch.atanh(z.clamp(-bound, bound))


@hyperbolic_op(2)
def mobius_add(x: torch.Tensor, y: torch.Tensor, c: Curvature = 1.0, *, out_dtype=None) -> torch.Tensor:
    """Möbius addition ``x ⊕_c y``.

    Args:
        x: ``(..., dim)`` points in the ball.
        y: ``(..., dim)`` points in the ball (broadcastable with ``x``).
        c: curvature magnitude (> 0).

    Returns:
        ``(..., dim)`` point ``x ⊕_c y``, projected into the ball.
    """
    return _project(_mobius_add(x, y, c), c, out_dtype)


@hyperbolic_op(1)
def expmap0(v: torch.Tensor, c: Curvature = 1.0, *, out_dtype=None) -> torch.Tensor:
    """Exponential map at the origin: ``exp^c_0(v) = tanh(sqrt(c)|v|) v / (sqrt(c)|v|)``.

    Args:
        v: ``(..., dim)`` tangent vectors at the origin (any finite norm).
        c: curvature magnitude (> 0).

    Returns:
        ``(..., dim)`` points in the ball with norm ``<= max_norm(c, v.dtype)``; ``expmap0(0) = 0``.
    """
    z = c.sqrt() * norm(v, min_norm_for(v.dtype))
    # |exp_0(v)| = tanh(z)/sqrt(c) is known in closed form, so the projection to (1 - eps)/sqrt(c) is folded into the
    # scale factor (no second norm pass). tanh(z)/z -> 1 at z -> 0; the min-norm floor rules out 0/0 at the origin.
    return v * (torch.tanh(z).clamp_max(1.0 - _ball_eps(out_dtype)) / z)


@hyperbolic_op(1)
def logmap0(x: torch.Tensor, c: Curvature = 1.0, *, out_dtype=None) -> torch.Tensor:
    """Logarithmic map at the origin (inverse of :func:`expmap0` inside the ball).

    Args:
        x: ``(..., dim)`` points in the ball (points outside are treated as on the projection bound).
        c: curvature magnitude (> 0).

    Returns:
        ``(..., dim)`` tangent vectors ``artanh(sqrt(c)|x|) x / (sqrt(c)|x|)``.
    """
    sc = c.sqrt()
    n = norm(x, min_norm_for(x.dtype))
    return _artanh(sc * n, out_dtype) * x / (sc * n)


@hyperbolic_op(2)
def expmap(x: torch.Tensor, v: torch.Tensor, c: Curvature = 1.0, *, out_dtype=None) -> torch.Tensor:
    """Exponential map at ``x``: ``x ⊕_c tanh(sqrt(c) λ_x |v| / 2) v / (sqrt(c)|v|)``.

    Args:
        x: ``(..., dim)`` base points in the ball.
        v: ``(..., dim)`` tangent vectors at ``x``.
        c: curvature magnitude (> 0).

    Returns:
        ``(..., dim)`` points in the ball.
    """
    sc = c.sqrt()
    lam = 2.0 / (1.0 - c * sqnorm(x)).clamp_min(min_norm_for(x.dtype))
    n = norm(v, min_norm_for(v.dtype))
    second = torch.tanh(sc * lam * n / 2) * v / (sc * n)
    return _project(_mobius_add(x, _project(second, c, out_dtype), c), c, out_dtype)


@hyperbolic_op(2)
def dist(x: torch.Tensor, y: torch.Tensor, c: Curvature = 1.0, *, out_dtype=None) -> torch.Tensor:
    """Geodesic distance ``d_c(x, y) = (2/sqrt(c)) artanh(sqrt(c) |(-x) ⊕_c y|)``, row-wise.

    Args:
        x: ``(..., dim)`` points in the ball.
        y: ``(..., dim)`` points in the ball (broadcastable with ``x``).
        c: curvature magnitude (> 0).

    Returns:
        ``(...)`` distances (>= 0).
    """
    sc = c.sqrt()
    m = norm(_mobius_add(-x, y, c), min_norm_for(x.dtype)).squeeze(-1)
    return 2.0 / sc * _artanh(sc * m, out_dtype)


@hyperbolic_op(2)
def pairwise_dist(x: torch.Tensor, y: torch.Tensor, c: Curvature = 1.0, *, out_dtype=None) -> torch.Tensor:
    """All-pairs geodesic distances, ``(..., n, dim) x (..., m, dim) -> (..., n, m)``.

    Uses the closed form of ``|(-x) ⊕_c y|^2`` in terms of ``|x|^2``, ``|y|^2`` and ``<x, y>`` so the
    memory is ``O(n m)`` (one matmul) instead of materialising ``n m dim`` Möbius sums.

    Args:
        x: ``(..., n, dim)`` points in the ball.
        y: ``(..., m, dim)`` points in the ball.
        c: curvature magnitude (> 0).

    Returns:
        ``(..., n, m)`` distances.
    """
    sc = c.sqrt()
    x2 = (x * x).sum(-1, keepdim=True)  # (..., n, 1)
    y2 = (y * y).sum(-1, keepdim=True).transpose(-1, -2)  # (..., 1, m)
    xy = x @ y.transpose(-1, -2)  # (..., n, m)
    # (-x) ⊕ y = (A (-x) + B y) / D with the three scalars below.
    a = 1 - 2 * c * xy + c * y2
    b = 1 - c * x2
    d = (1 - 2 * c * xy + c * c * x2 * y2).clamp_min(min_norm_for(x.dtype))
    num2 = a * a * x2 - 2 * a * b * xy + b * b * y2
    # num2 >= 0 mathematically; cancellation for x ≈ y can make it slightly negative, and the
    # floor also keeps the sqrt gradient finite at x == y.
    m = num2.clamp_min(min_norm_for(x.dtype) ** 2).sqrt() / d
    return 2.0 / sc * _artanh(sc * m, out_dtype)


@hyperbolic_op(1)
def dist0(x: torch.Tensor, c: Curvature = 1.0, *, out_dtype=None) -> torch.Tensor:
    """Hyperbolic radius ``d_c(0, x) = (2/sqrt(c)) artanh(sqrt(c)|x|)``.

    Saturates at ``(2/sqrt(c)) artanh(1 - eps)`` for points on the projection bound; use
    :func:`expmap0_radius` on the tangent vector when the point came from :func:`expmap0`.

    Args:
        x: ``(..., dim)`` points in the ball.
        c: curvature magnitude (> 0).

    Returns:
        ``(...)`` radii.
    """
    sc = c.sqrt()
    # The min-norm floor keeps the gradient of the norm finite at the origin (radius ~1e-15 there).
    return 2.0 / sc * _artanh(sc * norm(x, min_norm_for(x.dtype)).squeeze(-1), out_dtype)


@hyperbolic_op(1)
def expmap0_radius(v: torch.Tensor, c: Curvature = 1.0, *, out_dtype=None) -> torch.Tensor:
    """Exact hyperbolic radius of ``expmap0(v, c)`` computed from the tangent vector ``v``.

    Since ``|expmap0(v)| = tanh(sqrt(c)|v|)/sqrt(c)``, ``dist0(expmap0(v)) = (2/sqrt(c)) sqrt(c)|v| = 2|v|``
    for every curvature: the radius never saturates, unlike ``dist0`` of the float32 ball point.
    ``c`` is validated for symmetry with :func:`expmap0` but does not change the value.

    Args:
        v: ``(..., dim)`` tangent vectors at the origin.
        c: curvature magnitude (> 0).

    Returns:
        ``(...)`` radii ``2 |v|``.
    """
    del c  # the radius of exp^c_0(v) is 2|v| for every c > 0 (see docstring)
    return 2.0 * norm(v, min_norm_for(v.dtype)).squeeze(-1)  # floor: finite gradient at v = 0


@hyperbolic_op(1)
def project(x: torch.Tensor, c: Curvature = 1.0, *, out_dtype=None) -> torch.Tensor:
    """Pull points back inside the ball: norms above ``max_norm(c, x.dtype)`` are rescaled to it.

    Args:
        x: ``(..., dim)`` arbitrary points.
        c: curvature magnitude (> 0).

    Returns:
        ``(..., dim)`` points with ``sqrt(c)|x| <= 1 - eps``.
    """
    return _project(x, c, out_dtype)
