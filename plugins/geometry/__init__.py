"""Hyperbolic geometry core: pure tensor functions for the Poincaré ball and the Lorentz model.

``vlplugins.geometry.poincare`` and ``vlplugins.geometry.lorentz`` share conventions: curvature
``-c`` with ``c > 0`` given as a float or tensor, batched over leading dims, float32 (or float64)
internal precision with autocast disabled, results in the input dtype.
"""

from . import lorentz, poincare
from .curvature import clamped_curvature

__all__ = ["clamped_curvature", "lorentz", "poincare"]
