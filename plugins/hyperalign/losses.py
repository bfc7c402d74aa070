"""HyperAlign losses: regression on the normalised MOS and the dynamic-supervision entailment loss.

The paper's dynamic cone ``delta_dyn = alpha_c * delta'(f_T, s_T)`` is truncated in the text we could read; the
three modes below are our readings (see ``specs/hyperalign.md`` §1.4 and :class:`HyperAlignConfig`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .configuration import ENTAIL_MODES


def regression_loss(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``L_reg = mean((s_hat - s)^2)``.

    Args:
        scores: ``(batch,)`` predicted scores ``s_hat``.
        targets: ``(batch,)`` MOS normalised to ``[0, 1]``.

    Returns:
        Scalar loss.
    """
    return F.mse_loss(scores, targets.to(scores.dtype))


def entailment_loss(phi: torch.Tensor, delta: torch.Tensor, targets: torch.Tensor, mode: str = "score_weighted",
                    cone_alpha: float = 0.8, aperture_eps: float = 0.1) -> torch.Tensor:
    """Dynamic-supervision entailment loss (text = cone apex, image = child).

    * ``"score_weighted"``: ``mean(s * relu(phi - cone_alpha * delta))`` — pairs humans judged aligned are pushed
      into the (``cone_alpha``-shrunk) text cone in proportion to their score;
    * ``"scaled_aperture"``: ``mean(relu(phi - cone_alpha * delta * (1 - s + aperture_eps)))`` — a well-aligned pair
      gets a narrower (stricter) cone, a poorly aligned one a looser cone;
    * ``"meru"``: ``mean(relu(phi - delta))`` — MERU's plain hinge (no score, no cone factor), for ablations.

    Args:
        phi: ``(batch,)`` exterior angles ``phi(f'_T, f'_I)`` in radians.
        delta: ``(batch,)`` half apertures ``delta(f'_T)`` in radians.
        targets: ``(batch,)`` ground-truth scores ``s`` in ``[0, 1]``.
        mode: one of ``"score_weighted"``, ``"scaled_aperture"``, ``"meru"``.
        cone_alpha: cone factor ``alpha_c`` (0.8).
        aperture_eps: ``eps_g`` of ``"scaled_aperture"``.

    Returns:
        Scalar loss.
    """
    s = targets.to(phi.dtype)
    if mode == "score_weighted":
        return (s * F.relu(phi - cone_alpha * delta)).mean()
    if mode == "scaled_aperture":
        return F.relu(phi - cone_alpha * delta * (1.0 - s + aperture_eps)).mean()
    if mode == "meru":
        return F.relu(phi - delta).mean()
    raise ValueError(f"mode: expected one of {ENTAIL_MODES}, got {mode!r}")
