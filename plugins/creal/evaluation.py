"""Scene graph generation evaluation (PredCls / SGCls / SGDet) following Scene-Graph-Benchmark.pytorch.

Semantics of ``maskrcnn_benchmark/data/datasets/evaluation/vg/sgg_eval.py`` (see ``shared/specs/creal.md`` section 4),
vectorised: instead of the per-GT loop of ``_compute_pred_matches`` we build the ``(G, P)`` match matrix
``label-equal(gt g, pred p) & IoU(subj) >= thr & IoU(obj) >= thr`` once and read, for every GT relation, the rank of
the first prediction that hits it. ``|union of pred_to_gt[:K]|`` is then the number of GTs whose first hit rank is
below ``K``.

* **R@K** (graph constraint): one predicate per pair (argmax over foreground classes), pairs ranked by
  ``predicate score x subject score x object score``; per-image recall = hit GTs / GT relations; mean over images.
  Images without GT relations or without predicted pairs are skipped (as the reference does).
* **ngR@K**: every (pair, foreground predicate) is a candidate scored ``obj_s x obj_o x p[pred]``; the global top
  ``max(ks)`` (the reference keeps 100) are matched.
* **mR@K**: per image and predicate ``c`` occurring ``n_c > 0`` times, ``hits_c / n_c`` is appended to class ``c``'s
  list; ``mR_c`` = mean of the list (0 if ``c`` never occurs); ``mR@K`` = mean of ``mR_c`` over ``c = 1..K``.
* **zR@K**: recall over GT triplets ``(subject label, object label, predicate)`` absent from ``train_triplets``;
  only images with at least one such GT contribute.

Boxes are xyxy. IoU follows the reference's ``boxlist_iou`` pixel convention (``+1`` on widths and heights,
``box_pixel_offset=1``); pass ``box_pixel_offset=0`` for continuous coordinates.
"""

from __future__ import annotations

import math
from typing import Iterable, Optional, Sequence

import numpy as np

MODES = ("predcls", "sgcls", "sgdet")


def _np(x, name: str, dtype=None) -> np.ndarray:
    if x is None:
        raise ValueError(f"{name}: required, got None")
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy() if x.dtype.is_floating_point else x.detach().cpu().numpy()
    a = np.asarray(x)
    return a.astype(dtype) if dtype is not None else a


def box_iou(a: np.ndarray, b: np.ndarray, pixel_offset: float = 1.0) -> np.ndarray:
    """IoU matrix ``(N, M)`` of xyxy boxes ``a`` ``(N, 4)`` and ``b`` ``(M, 4)`` (``pixel_offset`` as above)."""
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    area_a = (a[:, 2] - a[:, 0] + pixel_offset) * (a[:, 3] - a[:, 1] + pixel_offset)
    area_b = (b[:, 2] - b[:, 0] + pixel_offset) * (b[:, 3] - b[:, 1] + pixel_offset)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt + pixel_offset, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


class SceneGraphEvaluator:
    """Accumulates per-image SGG results and computes R@K, ngR@K, mR@K, per-predicate and zero-shot recall.

    Args:
        mode: ``"predcls"`` (GT boxes and labels: the prediction's boxes/labels/scores are replaced by the GT's and
            1), ``"sgcls"`` (GT boxes, predicted labels) or ``"sgdet"`` (detector boxes; IoU >= ``iou_threshold`` on
            both boxes).
        ks: the K values.
        num_predicates: predicate classes including background 0 (VG-150: 51).
        iou_threshold: box-match threshold (the reference uses 0.5 in every mode; GT boxes match themselves).
        train_triplets: optional ``(T, 3)`` ``(subject label, object label, predicate)`` triplets seen in training;
            enables ``zR@K``.
        box_pixel_offset: ``1`` for the reference's IoU convention, ``0`` for continuous coordinates.

    Input per image (tensors or numpy):
        ground truth ``{"boxes": (N,4) xyxy, "labels": (N,) 1..C-1, "relations": (M,3) [subj, obj, predicate]}``;
        prediction ``{"boxes": (N',4), "labels": (N',), "scores": (N',), "rel_pairs": (P,2),
        "rel_scores": (P, num_predicates)}`` (column 0 = background; in PredCls boxes/labels/scores may be omitted).
    """

    def __init__(self, mode: str = "predcls", ks: Sequence[int] = (20, 50, 100), num_predicates: int = 51,
                 iou_threshold: float = 0.5, train_triplets=None, box_pixel_offset: float = 1.0):
        if mode not in MODES:
            raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
        ks = tuple(int(k) for k in ks)
        if not ks or any(k < 1 for k in ks):
            raise ValueError(f"ks: expected positive integers, got {ks}")
        if num_predicates < 2:
            raise ValueError(f"num_predicates: expected >= 2 (background + predicates), got {num_predicates}")
        if not 0.0 < iou_threshold <= 1.0:
            raise ValueError(f"iou_threshold: expected a value in (0, 1], got {iou_threshold}")
        self.mode, self.ks, self.num_predicates = mode, ks, num_predicates
        self.iou_threshold, self.box_pixel_offset = iou_threshold, box_pixel_offset
        self.train_triplets = None
        if train_triplets is not None:
            t = _np(train_triplets, "train_triplets", np.int64).reshape(-1, 3)
            self.train_triplets = {tuple(row) for row in t.tolist()}
        self.reset()

    def reset(self) -> None:
        """Forget all accumulated images."""
        self._recall = {k: [] for k in self.ks}
        self._ng_recall = {k: [] for k in self.ks}
        self._zs_recall = {k: [] for k in self.ks}
        self._per_pred = {k: [[] for _ in range(self.num_predicates)] for k in self.ks}
        self._ng_per_pred = {k: [[] for _ in range(self.num_predicates)] for k in self.ks}
        self.num_images = 0
        self.num_skipped = 0

    # -- per image -------------------------------------------------------------------------------------------
    def _check(self, gt: dict, pred: dict):
        g_boxes = _np(gt.get("boxes"), "ground_truth['boxes']", np.float64)
        g_labels = _np(gt.get("labels"), "ground_truth['labels']", np.int64)
        g_rels = _np(gt.get("relations"), "ground_truth['relations']", np.int64)
        n = g_boxes.shape[0] if g_boxes.ndim == 2 else -1
        if g_boxes.ndim != 2 or g_boxes.shape[1] != 4:
            raise ValueError(f"ground_truth['boxes']: expected shape (N, 4), got {g_boxes.shape}")
        if g_labels.shape != (n,):
            raise ValueError(f"ground_truth['labels']: expected shape ({n},), got {g_labels.shape}")
        g_rels = g_rels.reshape(-1, 3) if g_rels.size == 0 else g_rels
        if g_rels.ndim != 2 or g_rels.shape[1] != 3:
            raise ValueError(f"ground_truth['relations']: expected shape (M, 3), got {g_rels.shape}")
        if g_rels.size and (g_rels[:, :2].min() < 0 or g_rels[:, :2].max() >= n):
            raise ValueError(f"ground_truth['relations']: box indices must lie in [0, {n - 1}], got range "
                             f"[{g_rels[:, :2].min()}, {g_rels[:, :2].max()}]")
        if g_rels.size and (g_rels[:, 2].min() < 1 or g_rels[:, 2].max() >= self.num_predicates):
            raise ValueError(f"ground_truth['relations']: predicates must lie in [1, {self.num_predicates - 1}], got "
                             f"range [{g_rels[:, 2].min()}, {g_rels[:, 2].max()}]")
        if self.mode == "predcls":
            p_boxes, p_labels, p_scores = g_boxes, g_labels, np.ones(n)
        else:
            p_boxes = _np(pred.get("boxes"), "prediction['boxes']", np.float64)
            p_labels = _np(pred.get("labels"), "prediction['labels']", np.int64)
            p_scores = _np(pred.get("scores"), "prediction['scores']", np.float64)
            if p_boxes.ndim != 2 or p_boxes.shape[1] != 4:
                raise ValueError(f"prediction['boxes']: expected shape (N', 4), got {p_boxes.shape}")
            for name, a in (("labels", p_labels), ("scores", p_scores)):
                if a.shape != (p_boxes.shape[0],):
                    raise ValueError(f"prediction['{name}']: expected shape ({p_boxes.shape[0]},) like "
                                     f"prediction['boxes'], got {a.shape}")
        pairs = _np(pred.get("rel_pairs"), "prediction['rel_pairs']", np.int64)
        pairs = pairs.reshape(-1, 2) if pairs.size == 0 else pairs
        scores = _np(pred.get("rel_scores"), "prediction['rel_scores']", np.float64)
        scores = scores.reshape(-1, self.num_predicates) if scores.size == 0 else scores
        if pairs.ndim != 2 or pairs.shape[1] != 2:
            raise ValueError(f"prediction['rel_pairs']: expected shape (P, 2), got {pairs.shape}")
        if scores.shape != (pairs.shape[0], self.num_predicates):
            raise ValueError(f"prediction['rel_scores']: expected shape ({pairs.shape[0]}, {self.num_predicates}) "
                             f"(one row per rel_pairs row), got {scores.shape}")
        if pairs.size and (pairs.min() < 0 or pairs.max() >= p_boxes.shape[0]):
            raise ValueError(f"prediction['rel_pairs']: box indices must lie in [0, {p_boxes.shape[0] - 1}], got "
                             f"range [{pairs.min()}, {pairs.max()}]")
        return g_boxes, g_labels, g_rels, p_boxes, p_labels, p_scores, pairs, scores

    def _first_hit_rank(self, g_trip, p_trip, iou_obj, g_sub, g_obj, p_sub, p_obj):
        """Rank (0-based) of the first prediction hitting each GT (int64 max when none does).

        ``g_trip`` ``(G, 3)`` / ``p_trip`` ``(P, 3)`` are (subject label, predicate, object label) triplets,
        ``iou_obj`` ``(N, N')`` the GT-vs-predicted box IoU, and the ``*_sub`` / ``*_obj`` arrays box indices.
        """
        eq = (g_trip[:, None, :] == p_trip[None, :, :]).all(-1)  # (G, P) label equality
        ok = (iou_obj[g_sub][:, p_sub] >= self.iou_threshold) & (iou_obj[g_obj][:, p_obj] >= self.iou_threshold)
        match = eq & ok
        ranks = np.where(match, np.arange(match.shape[1])[None, :], np.iinfo(np.int64).max)
        first = ranks.min(axis=1) if match.shape[1] else np.full(match.shape[0], np.iinfo(np.int64).max)
        return first

    def add(self, ground_truth: dict, prediction: dict) -> None:
        """Accumulate one image (formats in the class docstring)."""
        g_boxes, g_labels, g_rels, p_boxes, p_labels, p_scores, pairs, scores = self._check(ground_truth, prediction)
        if g_rels.shape[0] == 0 or pairs.shape[0] == 0:
            self.num_skipped += 1  # the reference returns before recording anything for such images
            return
        self.num_images += 1
        iou_obj = box_iou(g_boxes, p_boxes, self.box_pixel_offset)  # (N, N') object-level IoU
        g_sub, g_obj, g_pred = g_rels[:, 0], g_rels[:, 1], g_rels[:, 2]
        g_trip = np.stack([g_labels[g_sub], g_pred, g_labels[g_obj]], axis=1)
        pair_obj_score = p_scores[pairs[:, 0]] * p_scores[pairs[:, 1]]

        # graph constraint: one predicate per pair, ranked by triple score (stable for ties)
        fg = scores[:, 1:]
        pred_cls = fg.argmax(1) + 1
        triple = fg.max(1) * pair_obj_score
        order = np.argsort(-triple, kind="stable")
        p_sub, p_obj, p_cls = pairs[order, 0], pairs[order, 1], pred_cls[order]
        p_trip = np.stack([p_labels[p_sub], p_cls, p_labels[p_obj]], axis=1)
        first = self._first_hit_rank(g_trip, p_trip, iou_obj, g_sub, g_obj, p_sub, p_obj)

        # no graph constraint: global top-max(ks) over (pair, foreground predicate)
        ng_scores = (pair_obj_score[:, None] * fg).ravel()
        top = np.argsort(-ng_scores, kind="stable")[:max(self.ks)]
        ng_pair, ng_cls = top // fg.shape[1], top % fg.shape[1] + 1
        n_sub, n_obj = pairs[ng_pair, 0], pairs[ng_pair, 1]
        n_trip = np.stack([p_labels[n_sub], ng_cls, p_labels[n_obj]], axis=1)
        ng_first = self._first_hit_rank(g_trip, n_trip, iou_obj, g_sub, g_obj, n_sub, n_obj)

        counts = np.bincount(g_pred, minlength=self.num_predicates)
        present = np.nonzero(counts)[0]
        zs = None
        if self.train_triplets is not None:
            zs = np.array([(int(a), int(b), int(c)) not in self.train_triplets
                           for a, b, c in zip(g_labels[g_sub], g_labels[g_obj], g_pred)], dtype=bool)
        for k in self.ks:
            hit, ng_hit = first < k, ng_first < k
            self._recall[k].append(hit.mean())
            self._ng_recall[k].append(ng_hit.mean())
            hits_c = np.bincount(g_pred, weights=hit, minlength=self.num_predicates)
            ng_hits_c = np.bincount(g_pred, weights=ng_hit, minlength=self.num_predicates)
            for c in present:
                self._per_pred[k][c].append(hits_c[c] / counts[c])
                self._ng_per_pred[k][c].append(ng_hits_c[c] / counts[c])
            if zs is not None and zs.any():
                self._zs_recall[k].append(hit[zs].mean())

    def add_batch(self, ground_truths: Iterable[dict], predictions: Iterable[dict]) -> None:
        """``add`` for each (ground truth, prediction) pair."""
        for g, p in zip(ground_truths, predictions):
            self.add(g, p)

    # -- results ---------------------------------------------------------------------------------------------
    def compute(self) -> dict:
        """Metrics as fractions in [0, 1].

        Returns:
            ``{"R@K", "ngR@K", "mR@K", "ng-mR@K": float, "per_predicate_R@K": list indexed by predicate id (index 0,
            background, is NaN), "zR@K" (only with ``train_triplets``; NaN if no image had a zero-shot GT),
            "num_images": int}`` for every K in ``ks``.
        """
        out: dict = {}
        nan = float("nan")
        for k in self.ks:
            out[f"R@{k}"] = float(np.mean(self._recall[k])) if self._recall[k] else nan
            out[f"ngR@{k}"] = float(np.mean(self._ng_recall[k])) if self._ng_recall[k] else nan
            per = [nan] + [float(np.mean(v)) if v else 0.0 for v in self._per_pred[k][1:]]
            ng_per = [float(np.mean(v)) if v else 0.0 for v in self._ng_per_pred[k][1:]]
            out[f"mR@{k}"] = float(np.mean(per[1:]))
            out[f"ng-mR@{k}"] = float(np.mean(ng_per))
            out[f"per_predicate_R@{k}"] = per
            if self.train_triplets is not None:
                out[f"zR@{k}"] = float(np.mean(self._zs_recall[k])) if self._zs_recall[k] else nan
        out["num_images"] = self.num_images
        return out


def format_metrics(results: dict, ks: Sequence[int], predicate_names: Optional[Sequence[str]] = None) -> str:
    """Text table of :meth:`SceneGraphEvaluator.compute` results (percentages)."""
    names = [m for m in ("R", "ngR", "mR", "ng-mR", "zR") if f"{m}@{ks[0]}" in results]
    lines = [f"{'metric':<7}" + "".join(f"{'@' + str(k):>9}" for k in ks)]
    for m in names:
        vals = [results[f"{m}@{k}"] for k in ks]
        lines.append(f"{m:<7}" + "".join((f"{'nan':>9}" if math.isnan(v) else f"{100 * v:9.2f}") for v in vals))
    if predicate_names is not None:
        lines.append("")
        lines.append(f"per-predicate R@{ks[-1]}:")
        per = results[f"per_predicate_R@{ks[-1]}"]
        for i in range(1, len(per)):
            lines.append(f"  {predicate_names[i]:<20} {100 * per[i]:6.2f}")
    return "\n".join(lines)
