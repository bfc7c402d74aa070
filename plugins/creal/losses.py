"""CReaL losses: (re-weighted) predicate cross-entropy, prototype regulariser, amplitude/phase triplet losses.

All functions are pure; the model combines them with the weights and switches of :class:`CReaLConfig`.
Notation follows ``shared/specs/creal.md`` section 3.4 (PE-Net's implementation for the details).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F


def inverse_frequency_weights(frequencies: Sequence[float] | torch.Tensor, power: float = 0.5) -> torch.Tensor:
    """Class weights ``w_c = n_c^(-power)`` normalised so that ``sum_c n_c w_c / sum_c n_c = 1``.

    The normalisation keeps the expected per-sample weight at 1, so the loss scale (and the learning rate that suits
    it) does not change when re-weighting is switched on. Classes with ``n_c = 0`` get the largest weight of the
    observed classes (they never occur in training, so the value only matters for safety).

    Args:
        frequencies: ``(C,)`` training counts per class.
        power: exponent (1 = plain inverse frequency, 0 = no re-weighting).

    Returns:
        ``(C,)`` float32 weights.
    """
    n = torch.as_tensor(frequencies, dtype=torch.float64, device="cpu")  # explicit: meta-device contexts
    if n.ndim != 1 or bool((n < 0).any()) or float(n.sum()) <= 0:
        raise ValueError(f"frequencies: expected a 1-d tensor of non-negative counts with a positive sum, got {n}")
    seen = n > 0
    w = torch.zeros_like(n)
    w[seen] = n[seen] ** (-power)
    w = w / ((n * w).sum() / n.sum())
    w[~seen] = w[seen].max()
    return w.float()


def relation_ce_loss(logits: torch.Tensor, labels: torch.Tensor,
                     class_weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Predicate cross-entropy over ``K+1`` classes (index 0 = background).

    Args:
        logits: ``(R, K+1)`` gated relation logits.
        labels: ``(R,)`` predicate ids in ``0..K``.
        class_weights: optional ``(K+1,)`` weights (see :func:`inverse_frequency_weights`); the weighted mean is
            normalised by the summed weights of the batch, as ``torch.nn.functional.cross_entropy`` does.

    Returns:
        Scalar loss (float32).
    """
    w = None if class_weights is None else class_weights.to(device=logits.device, dtype=torch.float32)
    return F.cross_entropy(logits.float(), labels, weight=w)


def prototype_regularizer(amp_prototypes: torch.Tensor, phase_prototypes: torch.Tensor,
                          gamma_dp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``L_reg`` of the spec: l2,1 similarity terms of both prototype sets plus the phase-prototype margin.

    ``L_21 = (1/N^2) sum_i ( ||p_a,i^T P_a||_2 + ||p_p,i^T P_p||_2 )`` over l2-normalised prototypes, with the right
    operand detached as in PE-Net (each prototype is pushed away from the others, not the others from it), and
    ``L_dp = (1/N) sum_i max(0, gamma_dp - min_{j != i} ||p_p,i - p_p,j||^2)`` on the normalised phase prototypes.

    Args:
        amp_prototypes: ``(N, d_e)`` amplitude prototypes ``P_a`` (normalised here).
        phase_prototypes: ``(N, d_e)`` phase prototypes ``P_p`` (normalised here).
        gamma_dp: margin; squared distances of unit vectors lie in ``[0, 4]``.

    Returns:
        ``(l21, margin)``: the two scalar terms (their sum is ``L_reg``).
    """
    n = amp_prototypes.shape[0]
    pa = F.normalize(amp_prototypes.float(), dim=-1)
    pp = F.normalize(phase_prototypes.float(), dim=-1)
    l21 = (pa @ pa.detach().t()).norm(dim=1).sum() / n**2 + (pp @ pp.detach().t()).norm(dim=1).sum() / n**2
    d = torch.cdist(pp, pp.detach()).pow(2)  # (N, N) squared distances of unit vectors, in [0, 4]
    d = d + torch.eye(n, device=d.device, dtype=d.dtype) * 1e4  # exclude j == i from the minimum
    margin = F.relu(gamma_dp - d.min(dim=1).values).mean()
    return l21, margin


def prototype_triplet_loss(embeds: torch.Tensor, prototypes: torch.Tensor, labels: torch.Tensor, margin: float,
                           num_hard_negatives: int = 1) -> torch.Tensor:
    """Triplet loss of l2-normalised embeddings against l2-normalised prototypes with hardest negatives.

    ``g_k = ||v - p_k||^2`` for every prototype; ``g+ = g_{y}``; ``g-`` = mean of the ``num_hard_negatives`` smallest
    ``g_k`` with ``k != y``; loss = mean over pairs of ``max(0, g+ - g- + margin)``.

    Args:
        embeds: ``(R, d_e)`` branch outputs (normalised here).
        prototypes: ``(K+1, d_e)`` prototypes (normalised here).
        labels: ``(R,)`` predicate ids in ``0..K``.
        margin: ``gamma_a`` or ``gamma_p``.
        num_hard_negatives: how many of the closest wrong prototypes are averaged.

    Returns:
        Scalar loss (float32); 0 for an empty batch.
    """
    if embeds.shape[0] == 0:
        return embeds.float().sum() * 0.0
    v = F.normalize(embeds.float(), dim=-1)
    p = F.normalize(prototypes.float(), dim=-1)
    # ||v - p||^2 = 2 - 2 v.p for unit vectors; the clamp only removes rounding below 0.
    g = (2.0 - 2.0 * v @ p.t()).clamp_min(0.0)
    pos = g.gather(1, labels[:, None]).squeeze(1)
    neg = g.scatter(1, labels[:, None], float("inf"))  # the positive can never be picked as a negative
    hardest = neg.topk(num_hard_negatives, dim=1, largest=False).values.mean(dim=1)
    return F.relu(pos - hardest + margin).mean()
