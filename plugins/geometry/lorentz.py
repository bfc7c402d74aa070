"""Lorentz (hyperboloid) model of hyperbolic space, MERU convention.

Points live on the upper sheet ``{x : <x, x>_L = -1/c, x_0 > 0}`` of curvature ``-c`` and are
stored as their *space* components only, shape ``(..., dim)``; the time component is recomputed
as ``x_0 = sqrt(1/c + |x|^2)`` (:func:`time_component`). ``<x, y>_L = x·y - x_0 y_0``.

All functions are pure, batched over leading dims, autograd-safe, computed in float32 at least
(float64 stays float64) with autocast disabled, and return the input dtype. Each clamp below
states its reason; the epsilons are those of the compute dtype (float32: 1e-6, float64: 1e-12),
because 1 + 1e-8 == 1 in float32 and would protect nothing.

Adapted from MERU (Desai et al., 2023, ``meru/lorentz.py``) with two stability changes, both exact
identities: ``log_map0`` uses ``asinh(sqrt(c)|x|)`` instead of ``acosh(sqrt(1 + c|x|^2))``, and the
row-wise :func:`dist` uses the chord length ``d = (2/sqrt(c)) asinh(sqrt(c) |x - y|_L / 2)``, which
has no cancellation for nearby points and gives ``dist(x, x) == 0``.
"""

from __future__ import annotations

import math

import torch

from ._common import Curvature, eps_for, hyperbolic_op, max_finite_norm, min_norm_for, norm

__all__ = [
    "time_component",
    "inner",
    "pairwise_inner",
    "exp_map0",
    "log_map0",
    "dist",
    "pairwise_dist",
    "half_aperture",
    "oxy_angle",
    "exp_map0_distance",
]

# MERU caps the sinh argument at asinh(2^15) ≈ 11.09 so that sinh never overflows fp16/fp32.
_SINH_MAX = math.asinh(2.0 ** 15)


def _time(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(1.0 / c + (x * x).sum(-1))


@hyperbolic_op(1)
def time_component(x: torch.Tensor, c: Curvature = 1.0, *, out_dtype=None) -> torch.Tensor:
    """Time component ``x_0 = sqrt(1/c + |x|^2)`` of hyperboloid points.

    Args:
        x: ``(..., dim)`` space components.
        c: curvature magnitude (> 0).

    Returns:
        ``(...)`` time components (>= 1/sqrt(c)).
    """
    return _time(x, c)


@hyperbolic_op(2)
def inner(x: torch.Tensor, y: torch.Tensor, c: Curvature = 1.0, *, out_dtype=None) -> torch.Tensor:
    """Row-wise Lorentzian inner product ``x·y - x_0 y_0``.

    Args:
        x: ``(..., dim)`` space components.
        y: ``(..., dim)`` space components (broadcastable with ``x``).
        c: curvature magnitude (> 0).

    Returns:
        ``(...)`` inner products (``<= -1/c`` for points on the hyperboloid).
    """
    return (x * y).sum(-1) - _time(x, c) * _time(y, c)


def _pairwise_inner(x: torch.Tensor, y: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    return x @ y.transpose(-1, -2) - _time(x, c).unsqueeze(-1) * _time(y, c).unsqueeze(-2)


@hyperbolic_op(2)
def pairwise_inner(x: torch.Tensor, y: torch.Tensor, c: Curvature = 1.0, *, out_dtype=None) -> torch.Tensor:
    """All-pairs Lorentzian inner products, ``(..., n, dim) x (..., m, dim) -> (..., n, m)``.

    Args:
        x: ``(..., n, dim)`` space components.
        y: ``(..., m, dim)`` space components.
        c: curvature magnitude (> 0).

    Returns:
        ``(..., n, m)`` inner products.
    """
    return _pairwise_inner(x, y, c)


@hyperbolic_op(1)
def exp_map0(v: torch.Tensor, c: Curvature = 1.0, *, out_dtype=None) -> torch.Tensor:
    """Exponential map at the hyperboloid vertex, returning space components.

    ``exp_map0(v) = sinh(sqrt(c)|v|) v / (sqrt(c)|v|)``.

    Args:
        v: ``(..., dim)`` tangent vectors at the vertex (any finite norm).
        c: curvature magnitude (> 0).

    Returns:
        ``(..., dim)`` space components; the distance to the vertex is ``min(|v|, asinh(2^15)/sqrt(c))``
        (see :func:`exp_map0_distance`), and in float16 the space norm is capped at 2^14 so that
        squared norms stay finite.
    """
    sc = c.sqrt()
    r = sc * norm(v, min_norm_for(v.dtype))
    # Upper clamp: sinh(11.09) = 2^15 keeps every later |x|^2 finite (MERU). Lower clamp is
    # implied by the min-norm floor of `norm`, which avoids 0/0 at the origin.
    out = torch.sinh(r.clamp_max(_SINH_MAX)) * v / r
    if out_dtype != torch.float16:
        return out
    # fp16 cannot hold 2^15/sqrt(c) for c < 0.25 (nor its square): cap the norm so the cast stays finite.
    cap = max_finite_norm(out_dtype)
    n = norm(out, min_norm_for(out.dtype))
    return torch.where(n > cap, out / n * cap, out)


@hyperbolic_op(1)
def exp_map0_distance(v: torch.Tensor, c: Curvature = 1.0, *, out_dtype=None) -> torch.Tensor:
    """Exact distance to the vertex of ``exp_map0(v, c)``, from the tangent vector ``v``.

    In exact arithmetic it is ``|v|``; this returns ``min(|v|, asinh(2^15)/sqrt(c))`` to match the cap
    applied by :func:`exp_map0`.

    Args:
        v: ``(..., dim)`` tangent vectors.
        c: curvature magnitude (> 0).

    Returns:
        ``(...)`` distances.
    """
    return torch.minimum(norm(v, min_norm_for(v.dtype)).squeeze(-1), _SINH_MAX / c.sqrt())


@hyperbolic_op(1)
def log_map0(x: torch.Tensor, c: Curvature = 1.0, *, out_dtype=None) -> torch.Tensor:
    """Logarithmic map at the vertex (inverse of :func:`exp_map0`).

    ``log_map0(x) = asinh(sqrt(c)|x|) x / (sqrt(c)|x|)``; ``asinh(s) == acosh(sqrt(1 + s^2))`` exactly,
    but needs no ``>= 1`` clamp and has a finite gradient at the vertex.

    Args:
        x: ``(..., dim)`` space components.
        c: curvature magnitude (> 0).

    Returns:
        ``(..., dim)`` tangent vectors.
    """
    s = c.sqrt() * norm(x, min_norm_for(x.dtype))
    return torch.asinh(s) * x / s


@hyperbolic_op(2)
def dist(x: torch.Tensor, y: torch.Tensor, c: Curvature = 1.0, *, out_dtype=None) -> torch.Tensor:
    """Row-wise geodesic distance ``acosh(-c <x, y>_L) / sqrt(c)``.

    Computed as ``(2/sqrt(c)) asinh(sqrt(c) |x - y|_L / 2)`` with the Lorentzian chord
    ``|x - y|_L^2 = |x - y|^2 - (x_0 - y_0)^2`` and ``x_0 - y_0 = ((x - y)·(x + y)) / (x_0 + y_0)``:
    exact, and free of the cancellation of ``-c<x, y>_L ≈ 1`` for nearby points.

    Args:
        x: ``(..., dim)`` space components.
        y: ``(..., dim)`` space components (broadcastable).
        c: curvature magnitude (> 0).

    Returns:
        ``(...)`` distances (``dist(x, x) == 0``).
    """
    delta = x - y
    dt = (delta * (x + y)).sum(-1) / (_time(x, c) + _time(y, c))
    chord2 = (delta * delta).sum(-1) - dt * dt
    # chord2 >= 0 on the hyperboloid; rounding can dip below 0, and the floor keeps the sqrt
    # gradient finite at x == y.
    chord = chord2.clamp_min(min_norm_for(x.dtype) ** 2).sqrt()
    sc = c.sqrt()
    return 2.0 / sc * torch.asinh(sc * chord / 2)


@hyperbolic_op(2)
def pairwise_dist(x: torch.Tensor, y: torch.Tensor, c: Curvature = 1.0, *, out_dtype=None) -> torch.Tensor:
    """All-pairs geodesic distances, ``(..., n, dim) x (..., m, dim) -> (..., n, m)``.

    ``d = acosh(max(-c <x, y>_L, 1 + eps)) / sqrt(c)``. The clamp keeps acosh's argument >= 1 (it
    dips below by rounding for x ≈ y) and its gradient finite (eps = 1e-6 in float32, where
    MERU's 1e-8 rounds away); hence ``d(x, x) ≈ sqrt(2 eps)/sqrt(c)`` rather than 0. Use the
    row-wise :func:`dist` when exact small distances matter.

    Args:
        x: ``(..., n, dim)`` space components.
        y: ``(..., m, dim)`` space components.
        c: curvature magnitude (> 0).

    Returns:
        ``(..., n, m)`` distances.
    """
    eps = eps_for(x.dtype)
    arg = (-c * _pairwise_inner(x, y, c)).clamp_min(1.0 + eps)
    return torch.acosh(arg) / c.sqrt()


@hyperbolic_op(1)
def half_aperture(x: torch.Tensor, c: Curvature = 1.0, min_radius: float = 0.1, *, out_dtype=None) -> torch.Tensor:
    """Half aperture of the entailment cone at ``x``: ``asin(2 min_radius / (sqrt(c)|x|))``.

    Args:
        x: ``(..., dim)`` space components (cone apexes).
        c: curvature magnitude (> 0).
        min_radius: radius ``K`` of the neighbourhood of the vertex where cones are not defined
            (MERU: 0.1; HyperAlign's ``k``).

    Returns:
        ``(...)`` half apertures in ``(0, π/2)``; ``≈ π/2`` inside the min-radius neighbourhood,
        decreasing in ``|x|``.
    """
    if not min_radius > 0:
        raise ValueError(f"min_radius: expected > 0, got {min_radius!r}")
    eps = eps_for(x.dtype)
    s = c.sqrt() * norm(x, min_norm_for(x.dtype)).squeeze(-1)
    # asin needs |arg| <= 1 and has an infinite gradient at 1: clamp to 1 - eps (meaningful in
    # the compute dtype). Inside the min-radius ball arg > 1 and the aperture saturates at ~π/2.
    return torch.asin((2.0 * min_radius / s).clamp(max=1.0 - eps))


@hyperbolic_op(2)
def oxy_angle(x: torch.Tensor, y: torch.Tensor, c: Curvature = 1.0, *, out_dtype=None) -> torch.Tensor:
    """Exterior angle at ``x`` of the hyperbolic triangle (origin ``O``, ``x``, ``y``), row-wise.

    It is the angle between the geodesic ray ``O -> x`` extended beyond ``x`` and the geodesic
    ``x -> y``: 0 when ``y`` lies on the ray beyond ``x`` (``y`` is inside every cone at ``x``), π when
    ``y`` lies between ``O`` and ``x``. Entailment "x entails y" holds when
    ``oxy_angle(x, y) <= half_aperture(x)``.

    From the hyperbolic law of cosines, with ``z = c <x, y>_L``:
    ``cos φ = (y_0 + z x_0) / (|x| sqrt(z^2 - 1))``.

    Args:
        x: ``(..., dim)`` space components (cone apexes).
        y: ``(..., dim)`` space components (broadcastable).
        c: curvature magnitude (> 0).

    Returns:
        ``(...)`` angles in ``[0, π]``.
    """
    eps = eps_for(x.dtype)
    mn = min_norm_for(x.dtype)
    xt, yt = _time(x, c), _time(y, c)
    z = c * ((x * y).sum(-1) - xt * yt)
    num = yt + z * xt
    # z^2 - 1 = sinh^2(d) vanishes at x == y; the floor keeps sqrt and the division finite there
    # (the angle is then undefined and the clamp below returns a bounded value).
    # The angle at the vertex itself is undefined and its gradient grows like 1/|x|: flooring sqrt(c)|x| at 1e-4
    # (far inside the min-radius ball, where cones are not used) bounds it by ~1e4, finite even in fp16.
    xn = torch.maximum(norm(x, mn).squeeze(-1), 1e-4 / c.sqrt())
    den = xn * (z * z - 1).clamp_min(eps).sqrt()
    # acos is only defined on [-1, 1] and has infinite gradients at ±1.
    return torch.acos((num / den).clamp(-1.0 + eps, 1.0 - eps))
