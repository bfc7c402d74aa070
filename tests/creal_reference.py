"""Loop-based reference of Scene-Graph-Benchmark's sgg_eval (R@K, ngR@K, mR@K), written independently of
``vlplugins.creal.evaluation`` for the CReaL tests: per-GT loops, Python sets, explicit IoU with the +1 pixel rule."""

from __future__ import annotations

import numpy as np


def iou_px(a, b, offset=1.0):
    aw, ah = a[2] - a[0] + offset, a[3] - a[1] + offset
    bw, bh = b[2] - b[0] + offset, b[3] - b[1] + offset
    iw = min(a[2], b[2]) - max(a[0], b[0]) + offset
    ih = min(a[3], b[3]) - max(a[1], b[1]) + offset
    inter = max(iw, 0.0) * max(ih, 0.0)
    return inter / (aw * ah + bw * bh - inter)


def pred_to_gt(gt_rels, gt_labels, gt_boxes, trip, boxes_s, boxes_o, thr, offset):
    """List per prediction of the GT indices it hits (the reference's _compute_pred_matches)."""
    out = [[] for _ in trip]
    for g, (s, o, p) in enumerate(gt_rels):
        gl = (gt_labels[s], p, gt_labels[o])
        for i, t in enumerate(trip):
            if tuple(t) == gl and iou_px(gt_boxes[s], boxes_s[i], offset) >= thr \
                    and iou_px(gt_boxes[o], boxes_o[i], offset) >= thr:
                out[i].append(g)
    return out


def reference_eval(images, ks, num_predicates, thr=0.5, offset=1.0):
    """``images``: list of (gt, pred) dicts in the evaluator format (pred holds boxes/labels/scores)."""
    rec = {k: [] for k in ks}
    ngrec = {k: [] for k in ks}
    per = {k: [[] for _ in range(num_predicates)] for k in ks}
    for gt, pred in images:
        gt_rels = [tuple(int(v) for v in r) for r in np.asarray(gt["relations"]).reshape(-1, 3)]
        pairs = np.asarray(pred["rel_pairs"]).reshape(-1, 2)
        if not gt_rels or len(pairs) == 0:
            continue
        gl, gb = list(np.asarray(gt["labels"])), np.asarray(gt["boxes"], dtype=float)
        pl, pb, ps = list(np.asarray(pred["labels"])), np.asarray(pred["boxes"], dtype=float), list(pred["scores"])
        rs = np.asarray(pred["rel_scores"], dtype=float)
        cands = []
        for i, (s, o) in enumerate(pairs):
            best = max(range(1, num_predicates), key=lambda c: (rs[i, c], -c))
            cands.append((-(rs[i, best] * ps[s] * ps[o]), i, s, o, best))
        cands.sort()
        trip = [(pl[s], c, pl[o]) for _, _, s, o, c in cands]
        m = pred_to_gt(gt_rels, gl, gb, trip, [pb[s] for _, _, s, _, _ in cands], [pb[o] for _, _, _, o, _ in cands],
                       thr, offset)
        ng = []
        for i, (s, o) in enumerate(pairs):
            for c in range(1, num_predicates):
                ng.append((-(rs[i, c] * ps[s] * ps[o]), i * (num_predicates - 1) + c - 1, s, o, c))
        ng.sort()
        ng = ng[:max(ks)]
        ntrip = [(pl[s], c, pl[o]) for _, _, s, o, c in ng]
        nm = pred_to_gt(gt_rels, gl, gb, ntrip, [pb[s] for _, _, s, _, _ in ng], [pb[o] for _, _, _, o, _ in ng],
                        thr, offset)
        for k in ks:
            hit = set(g for lst in m[:k] for g in lst)
            rec[k].append(len(hit) / len(gt_rels))
            ngrec[k].append(len(set(g for lst in nm[:k] for g in lst)) / len(gt_rels))
            for c in range(1, num_predicates):
                idx = [g for g, r in enumerate(gt_rels) if r[2] == c]
                if idx:
                    per[k][c].append(sum(g in hit for g in idx) / len(idx))
    out = {}
    for k in ks:
        out[f"R@{k}"] = float(np.mean(rec[k]))
        out[f"ngR@{k}"] = float(np.mean(ngrec[k]))
        out[f"mR@{k}"] = float(np.mean([np.mean(v) if v else 0.0 for v in per[k][1:]]))
    return out
