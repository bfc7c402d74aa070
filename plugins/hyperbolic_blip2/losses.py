"""ITC and ITM losses as in BLIP-2 stage 1 (LAVIS ``blip2_qformer.Blip2Qformer.forward``)."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def itc_loss(logits_per_image: torch.Tensor, logits_per_text: torch.Tensor,
             label_smoothing: float = 0.1) -> torch.Tensor:
    """Symmetric InfoNCE over in-batch pairs: ``(CE(s/τ, diag) + CE(s^T/τ, diag)) / 2`` with label smoothing.

    Args:
        logits_per_image: ``(batch, batch)`` image-to-text logits s(I_i, T_j)/τ (row i's positive is column i).
        logits_per_text: ``(batch, batch)`` text-to-image logits.
        label_smoothing: BLIP-2 uses 0.1.

    Returns:
        Scalar float32 loss.
    """
    targets = torch.arange(logits_per_image.shape[0], device=logits_per_image.device)
    return (F.cross_entropy(logits_per_image.float(), targets, label_smoothing=label_smoothing)
            + F.cross_entropy(logits_per_text.float(), targets, label_smoothing=label_smoothing)) / 2


@torch.no_grad()
def sample_hard_negatives(sim_i2t: torch.Tensor, sim_t2i: torch.Tensor,
                          generator: Optional[torch.Generator] = None,
                          deterministic: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """BLIP-2 hard-negative mining: draw one negative per row from ``softmax(sim) + 1e-4`` with the positive
    (diagonal) set to 0.

    Args:
        sim_i2t: ``(batch, batch)`` max-over-queries ITC logits (image rows).
        sim_t2i: ``(batch, batch)`` (text rows).
        generator: optional CPU generator for ``torch.multinomial``.
        deterministic: take the most likely negative (argmax) instead of sampling (used in eval mode so that
            ``model.eval()`` losses are reproducible).

    Returns:
        ``neg_text_for_image (batch,)`` and ``neg_image_for_text (batch,)`` indices (never the positive).
    """
    # + 1e-4 as LAVIS: every non-positive keeps a non-zero chance even when the softmax underflows.
    w_i2t = F.softmax(sim_i2t.float(), dim=1) + 1e-4
    w_i2t.fill_diagonal_(0)
    w_t2i = F.softmax(sim_t2i.float(), dim=1) + 1e-4
    w_t2i.fill_diagonal_(0)
    if deterministic:
        return w_i2t.argmax(dim=1), w_t2i.argmax(dim=1)
    neg_text = torch.multinomial(w_i2t.cpu(), 1, generator=generator).flatten().to(sim_i2t.device)
    neg_image = torch.multinomial(w_t2i.cpu(), 1, generator=generator).flatten().to(sim_i2t.device)
    return neg_text, neg_image


def itm_loss(itm_logits: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Cross-entropy of the ITM head over ``[positives (B), image-negatives (B), text-negatives (B)]``.

    Args:
        itm_logits: ``(3 * batch_size, 2)`` logits (class 1 = match), ordered as built by the model.
        batch_size: B.

    Returns:
        Scalar float32 loss.
    """
    labels = torch.cat([torch.ones(batch_size, dtype=torch.long), torch.zeros(2 * batch_size, dtype=torch.long)])
    return F.cross_entropy(itm_logits.float(), labels.to(itm_logits.device))
