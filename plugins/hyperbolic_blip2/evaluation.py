"""Two-stage image-text retrieval evaluation as in BLIP-2 (LAVIS ``compute_sim_matrix`` + ``_report_metrics``).

Stage 1: ITC similarity matrix ``(num_images, num_texts)`` (max over queries of the head's similarity).
Stage 2: for every image (text), the top-``k`` texts (images) by ITC are re-scored with ``ITM logit + ITC score``
(LAVIS adds the two); everything outside the top-k gets ``-inf``-like scores. Recall@K is computed from the final
score matrices in row chunks, so a 5k x 25k matrix is ranked without materialising sorts of the whole matrix.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch

KS = (1, 5, 10)


def gt_from_text_image_ids(text_image_ids: Sequence[int] | torch.Tensor, num_images: int) -> list[list[int]]:
    """Invert ``text_image_ids`` (the image index of every text) into ``img2txt`` lists."""
    img2txt: list[list[int]] = [[] for _ in range(num_images)]
    for t, i in enumerate(torch.as_tensor(text_image_ids).tolist()):
        img2txt[i].append(t)
    return img2txt


@torch.no_grad()
def retrieval_ranks(scores_i2t: torch.Tensor, text_image_ids: torch.Tensor, scores_t2i: Optional[torch.Tensor] = None,
                    chunk_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank (0 = first) of the best ground-truth item for every query, computed in chunks.

    Text retrieval: image i's rank is the number of texts scoring strictly higher than its best-scoring
    ground-truth caption (ties favour the ground truth, as a stable argsort on distinct scores would).
    Image retrieval: text t's rank is the number of images scoring strictly higher than its image.

    Args:
        scores_i2t: ``(num_images, num_texts)`` image-to-text scores.
        text_image_ids: ``(num_texts,)`` long, the image of every text.
        scores_t2i: ``(num_texts, num_images)``; defaults to ``scores_i2t.T`` (symmetric ITC scores).
        chunk_size: rows per chunk (bounds the temporary memory to ``chunk_size x num_cols``).

    Returns:
        ``tr_ranks (num_images,)`` and ``ir_ranks (num_texts,)`` long tensors.
    """
    num_images, num_texts = scores_i2t.shape
    text_image_ids = torch.as_tensor(text_image_ids, device=scores_i2t.device).long()
    if text_image_ids.shape != (num_texts,):
        raise ValueError(f"text_image_ids: expected shape ({num_texts},), got {tuple(text_image_ids.shape)}")
    if scores_t2i is None:
        scores_t2i = scores_i2t.t()
    tr = torch.empty(num_images, dtype=torch.long, device=scores_i2t.device)
    for s in range(0, num_images, chunk_size):
        rows = scores_i2t[s:s + chunk_size]
        gt = text_image_ids[None, :] == torch.arange(s, s + rows.shape[0], device=rows.device)[:, None]
        best_gt = torch.where(gt, rows, torch.finfo(rows.dtype).min).max(dim=1, keepdim=True).values
        tr[s:s + rows.shape[0]] = (rows > best_gt).sum(dim=1)
    ir = torch.empty(num_texts, dtype=torch.long, device=scores_i2t.device)
    for s in range(0, num_texts, chunk_size):
        rows = scores_t2i[s:s + chunk_size]
        gt_score = rows.gather(1, text_image_ids[s:s + rows.shape[0], None])
        ir[s:s + rows.shape[0]] = (rows > gt_score).sum(dim=1)
    return tr, ir


def recall_at_k(tr_ranks: torch.Tensor, ir_ranks: torch.Tensor, ks: Sequence[int] = KS) -> dict[str, float]:
    """``{"txt_r1": %, ..., "img_r1": %, ..., "r_mean": %}`` from ranks (LAVIS' metric names)."""
    out = {}
    for k in ks:
        out[f"txt_r{k}"] = 100.0 * float((tr_ranks < k).float().mean())
    for k in ks:
        out[f"img_r{k}"] = 100.0 * float((ir_ranks < k).float().mean())
    out["txt_r_mean"] = sum(out[f"txt_r{k}"] for k in ks) / len(ks)
    out["img_r_mean"] = sum(out[f"img_r{k}"] for k in ks) / len(ks)
    out["r_mean"] = (out["txt_r_mean"] + out["img_r_mean"]) / 2
    return out


@torch.no_grad()
def itm_rerank(sim_i2t: torch.Tensor, k: int, itm_score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
               fill: float = -100.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Stage 2 of BLIP-2 retrieval: re-score each row's ITC top-``k`` with ``ITM + ITC``.

    Args:
        sim_i2t: ``(num_images, num_texts)`` ITC similarities.
        k: candidates per query (LAVIS ``k_test``, 128 for COCO).
        itm_score: ``itm_score(image_idx (n,), text_idx (n,)) -> (n,)`` ITM match logits of the given pairs.
        fill: score of everything outside the top-k (LAVIS uses -100).

    Returns:
        ``scores_i2t (num_images, num_texts)`` and ``scores_t2i (num_texts, num_images)``.
    """
    scores_i2t = _rerank_rows(sim_i2t, k, fill, itm_score)
    # Text->image rows: the row index is the text, so the ITM call takes its arguments swapped.
    scores_t2i = _rerank_rows(sim_i2t.t(), k, fill, lambda txt, img: itm_score(img, txt))
    return scores_i2t, scores_t2i


def _rerank_rows(sim: torch.Tensor, k: int, fill: float,
                 pair_score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``(rows, cols)`` scores: ``pair_score(row, col) + sim`` on each row's top-``k`` columns, ``fill`` elsewhere."""
    rows, cols = sim.shape
    k = min(k, cols)
    top_sim, top_idx = sim.topk(k, dim=1)  # (rows, k)
    row_idx = torch.arange(rows, device=sim.device)[:, None].expand_as(top_idx)
    extra = pair_score(row_idx.reshape(-1), top_idx.reshape(-1)).reshape(rows, k)
    return torch.full_like(sim, fill).scatter_(1, top_idx, extra.to(sim.dtype) + top_sim)


@torch.no_grad()
def evaluate_retrieval(model, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                       text_image_ids: Sequence[int] | torch.Tensor, k_test: Optional[int] = 16,
                       batch_size: int = 64, itm_batch_size: int = 128) -> dict[str, float]:
    """TR/IR@1/5/10 of a :class:`~vlplugins.hyperbolic_blip2.HyperbolicBlip2ForImageTextRetrieval`.

    Args:
        model: the hyperbolic model (put in eval mode here).
        pixel_values: ``(num_images, 3, H, W)``.
        input_ids / attention_mask: ``(num_texts, seq)``.
        text_image_ids: ``(num_texts,)`` image index of every caption.
        k_test: ITM re-ranking depth; ``None`` or 0 = ITC only.
        batch_size / itm_batch_size: encoder and ITM batch sizes.

    Returns:
        Recall metrics in percent (``txt_r1`` = TR@1, ``img_r1`` = IR@1, ...).
    """
    model.eval()
    device = next(model.parameters()).device
    vision, points = [], []
    for s in range(0, pixel_values.shape[0], batch_size):
        v = model._vision_states(pixel_values[s:s + batch_size].to(device))
        vision.append(v)
        points.append(model.head.embed(model._query_features(v), "image").points)
    vision = torch.cat(vision)
    img_points = torch.cat(points)
    txt_points = torch.cat([
        model.encode_text(input_ids[s:s + batch_size].to(device), attention_mask[s:s + batch_size].to(device)).points
        for s in range(0, input_ids.shape[0], batch_size)])
    sim = torch.cat([model.head.best_query(model.head.query_text_similarity(img_points[s:s + batch_size],
                                                                           txt_points))[0]
                     for s in range(0, img_points.shape[0], batch_size)])
    text_image_ids = torch.as_tensor(text_image_ids, device=sim.device)
    if k_test:
        ids, mask = input_ids.to(device), attention_mask.to(device)

        def itm_score(img_idx: torch.Tensor, txt_idx: torch.Tensor) -> torch.Tensor:
            out = []
            for s in range(0, img_idx.numel(), itm_batch_size):
                ii, tt = img_idx[s:s + itm_batch_size], txt_idx[s:s + itm_batch_size]
                out.append(model.itm_logits(vision[ii], ids[tt], mask[tt])[:, 1].float())
            return torch.cat(out)

        scores_i2t, scores_t2i = itm_rerank(sim, k_test, itm_score)
    else:
        scores_i2t, scores_t2i = sim, sim.t()
    tr, ir = retrieval_ranks(scores_i2t, text_image_ids, scores_t2i)
    return recall_at_k(tr, ir)
