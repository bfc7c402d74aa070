"""SceneGraphEvaluator: hand-worked cases (numbers derived in the comments) and a loop-based reference."""

import math

import numpy as np
import pytest
import torch

from vlplugins.creal import SceneGraphEvaluator
from vlplugins.creal.evaluation import box_iou, format_metrics

from creal_reference import reference_eval

# Image 1: three boxes, four GT relations; the pair (0, 1) is annotated twice (predicates 1 and 2).
GT1 = {"boxes": np.array([[0, 0, 10, 10], [20, 0, 30, 10], [0, 20, 10, 30]], dtype=np.float32),
       "labels": np.array([1, 2, 3]),
       "relations": np.array([[0, 1, 1], [1, 2, 2], [0, 2, 3], [0, 1, 2]])}
# rel_scores columns: background, p1, p2, p3.  Per pair: argmax over p1..p3 and its score (object scores are 1):
#   A (0,1): p1 .6      B (1,2): p2 .5      C (0,2): p1 .7
#   D (1,0): p1 .05     E (2,0): p3 .2      F (2,1): p1 .3
# Graph-constrained ranking: C(.7) A(.6) B(.5) F(.3) E(.2) D(.05).
#   C -> (1, p1, 3) matches nothing (GT of (0,2) is p3); A -> GT 0; B -> GT 1; F, E, D match nothing.
PRED1 = {"rel_pairs": np.array([[0, 1], [1, 2], [0, 2], [1, 0], [2, 0], [2, 1]]),
         "rel_scores": np.array([[0.1, 0.6, 0.3, 0.0],
                                 [0.0, 0.1, 0.5, 0.4],
                                 [0.2, 0.7, 0.0, 0.1],
                                 [0.9, 0.05, 0.05, 0.0],
                                 [0.6, 0.1, 0.1, 0.2],
                                 [0.5, 0.3, 0.1, 0.1]])}
# Image 2: two identical labels, disjoint boxes, GT (0, 1, p1). Pair (1,0) predicts p1 with the same label triplet
# (1, p1, 1) but the boxes are swapped, so IoU fails: no graph-constrained hit. No-graph-constraint top list:
# (1,0,p1) .9, (0,1,p2) .8, (0,1,p1) .2 -> the GT is hit at rank 2.
GT2 = {"boxes": np.array([[0, 0, 10, 10], [40, 40, 50, 50]], dtype=np.float32), "labels": np.array([1, 1]),
       "relations": np.array([[0, 1, 1]])}
PRED2 = {"rel_pairs": np.array([[0, 1], [1, 0]]),
         "rel_scores": np.array([[0.0, 0.2, 0.8, 0.0], [0.0, 0.9, 0.1, 0.0]])}
GT_EMPTY = {"boxes": np.zeros((2, 4), np.float32), "labels": np.array([1, 2]), "relations": np.zeros((0, 3))}


def _predcls_eval(**kwargs):
    ev = SceneGraphEvaluator("predcls", ks=(1, 3, 5), num_predicates=4, **kwargs)
    ev.add(GT1, PRED1)
    ev.add(GT2, PRED2)
    ev.add(GT_EMPTY, {"rel_pairs": np.array([[0, 1]]), "rel_scores": np.full((1, 4), 0.25)})  # skipped: no GT
    ev.add(GT2, {"rel_pairs": np.zeros((0, 2)), "rel_scores": np.zeros((0, 4))})  # skipped: no predicted pair
    return ev


def test_hand_worked_predcls_recall_and_mean_recall():
    res = _predcls_eval().compute()
    assert res["num_images"] == 2
    # R@K per image: image 1 hits {} / {0} ... at ranks 1, 2 -> R@1 = 0, R@3 = R@5 = 2/4; image 2 always 0.
    assert res["R@1"] == 0.0
    assert res["R@3"] == pytest.approx((2 / 4 + 0) / 2)
    assert res["R@5"] == pytest.approx((2 / 4 + 0) / 2)
    # mR@3: p1 occurs in both images: [1/1, 0/1] -> 0.5; p2 occurs in image 1 (GT 1 hit, GT 3 not) -> 0.5;
    # p3 occurs in image 1, never hit -> 0.  mR@3 = (0.5 + 0.5 + 0) / 3.
    assert res["mR@1"] == 0.0
    assert res["mR@3"] == pytest.approx(1 / 3)
    assert res["mR@5"] == pytest.approx(1 / 3)
    assert math.isnan(res["per_predicate_R@3"][0])
    assert res["per_predicate_R@3"][1:] == pytest.approx([0.5, 0.5, 0.0])
    # ngR, image 1: candidates sorted: C.p1 .7, A.p1 .6, B.p2 .5, B.p3 .4, A.p2 .3 (A.p2 ties F.p1 at .3 and comes
    # first by position). Hits: A.p1 -> GT 0, B.p2 -> GT 1, A.p2 -> GT 3 (the duplicate annotation of pair (0,1)).
    #   ngR@1 = 0, ngR@3 = 2/4, ngR@5 = 3/4.  Image 2: ngR@1 = 0, ngR@3 = ngR@5 = 1.
    assert res["ngR@1"] == 0.0
    assert res["ngR@3"] == pytest.approx((2 / 4 + 1) / 2)
    assert res["ngR@5"] == pytest.approx((3 / 4 + 1) / 2)
    # ng-mR@5: p1 [1, 1] -> 1, p2 [2/2] -> 1, p3 [0] -> 0.
    assert res["ng-mR@5"] == pytest.approx(2 / 3)


def test_hand_worked_zero_shot_recall():
    # GT triplets (subject label, object label, predicate): image 1: (1,2,1) (2,3,2) (1,3,3) (1,2,2); image 2: (1,1,1).
    # Seen in training: (1,2,1), (1,3,3), (1,1,1) -> zero-shot GTs are image 1's GT 1 and GT 3; image 2 has none.
    # GT 1 is hit at rank 2 (graph constraint), GT 3 never: zR@1 = 0, zR@3 = zR@5 = 1/2.
    res = _predcls_eval(train_triplets=[[1, 2, 1], [1, 3, 3], [1, 1, 1]]).compute()
    assert res["zR@1"] == 0.0
    assert res["zR@3"] == pytest.approx(0.5)
    assert res["zR@5"] == pytest.approx(0.5)
    assert "zR@3" not in _predcls_eval().compute()


def test_hand_worked_sgdet_iou_threshold_and_pixel_convention():
    gt = {"boxes": np.array([[0, 0, 9, 9], [20, 20, 29, 29]], np.float32), "labels": np.array([1, 2]),
          "relations": np.array([[0, 1, 1]])}
    # With the +1 pixel rule: p0 vs GT 0: area 10*5 = 50, inter 50, GT area 100 -> IoU 0.5 (accepted, >= 0.5);
    # p2 vs GT 0: 40 / 100 = 0.4 (rejected); p1 vs GT 1: 90 / 100 = 0.9.
    pred = {"boxes": np.array([[0, 0, 9, 4], [20, 20, 29, 28], [0, 0, 9, 3]], np.float32),
            "labels": np.array([1, 2, 1]), "scores": np.array([0.9, 0.8, 0.5]),
            "rel_pairs": np.array([[0, 1], [2, 1]]),
            "rel_scores": np.array([[0.5, 0.5, 0.0], [0.05, 0.95, 0.0]])}
    # triple scores: (0,1) .5 * .9 * .8 = .36; (2,1) .95 * .5 * .8 = .38 -> (2,1) ranks first and misses (IoU .4);
    # (0,1) second and hits.  R@1 = 0, R@2 = 1.
    ev = SceneGraphEvaluator("sgdet", ks=(1, 2), num_predicates=3)
    ev.add(gt, pred)
    res = ev.compute()
    assert (res["R@1"], res["R@2"]) == (0.0, 1.0)
    # Continuous coordinates: p0 IoU = 9*4 / 81 = 0.444 < 0.5 -> no hit at all.
    ev0 = SceneGraphEvaluator("sgdet", ks=(1, 2), num_predicates=3, box_pixel_offset=0.0)
    ev0.add(gt, pred)
    assert ev0.compute()["R@2"] == 0.0
    assert box_iou(np.array([[0, 0, 9, 4.]]), np.array([[0, 0, 9, 9.]]))[0, 0] == pytest.approx(0.5)
    assert box_iou(np.array([[0, 0, 9, 4.]]), np.array([[0, 0, 9, 9.]]), 0.0)[0, 0] == pytest.approx(36 / 81)


def test_sgcls_uses_predicted_labels():
    # Same as image 1 but the predicted label of box 1 is wrong (3 instead of 2): GT 0 (0,1,p1) and GT 1 (1,2,p2)
    # can no longer match, so R@5 = 0 (the other predictions did not hit before either).
    pred = dict(PRED1, boxes=GT1["boxes"], labels=np.array([1, 3, 3]), scores=np.ones(3))
    ev = SceneGraphEvaluator("sgcls", ks=(5,), num_predicates=4)
    ev.add(GT1, pred)
    assert ev.compute()["R@5"] == 0.0
    ev.reset()
    ev.add(GT1, dict(PRED1, boxes=GT1["boxes"], labels=GT1["labels"], scores=np.ones(3)))
    assert ev.compute()["R@5"] == pytest.approx(0.5)


def test_matches_loop_reference_on_random_sgdet_images():
    rng = np.random.default_rng(0)
    ks, c = (5, 10, 20), 6
    images = []
    for _ in range(12):
        n = int(rng.integers(2, 6))
        xy = rng.uniform(0, 40, (n, 2))
        gb = np.concatenate([xy, xy + rng.uniform(4, 20, (n, 2))], 1).astype(np.float32)
        gl = rng.integers(1, 4, n)
        m = int(rng.integers(1, 6))
        rels = np.stack([rng.integers(0, n, m), rng.integers(0, n, m), rng.integers(1, c, m)], 1)
        rels = rels[rels[:, 0] != rels[:, 1]]
        if len(rels) == 0:
            rels = np.array([[0, 1, 1]])
        # detections: the GT boxes jittered (some beyond IoU 0.5), plus labels that are sometimes wrong
        nd = n + 1
        src = np.concatenate([np.arange(n), rng.integers(0, n, 1)])
        db = gb[src] + rng.normal(0, 2.0, (nd, 4)).astype(np.float32)
        db[:, 2:] = np.maximum(db[:, 2:], db[:, :2] + 1)
        dl = np.where(rng.random(nd) < 0.8, gl[src], rng.integers(1, 4, nd))
        pairs = np.array([(i, j) for i in range(nd) for j in range(nd) if i != j])
        rs = rng.dirichlet(np.ones(c), len(pairs))
        images.append(({"boxes": gb, "labels": gl, "relations": rels},
                       {"boxes": db, "labels": dl, "scores": rng.uniform(0.3, 1, nd), "rel_pairs": pairs,
                        "rel_scores": rs}))
    ev = SceneGraphEvaluator("sgdet", ks=ks, num_predicates=c)
    for g, p in images:  # torch inputs are accepted too
        ev.add({k: torch.as_tensor(v) for k, v in g.items()}, {k: torch.as_tensor(v) for k, v in p.items()})
    res = ev.compute()
    ref = reference_eval(images, ks, c)
    for key, val in ref.items():
        assert res[key] == pytest.approx(val, abs=1e-12), key
    assert 0 < res["R@20"] < 1 and res["R@5"] <= res["R@10"] <= res["R@20"]


def test_bad_inputs_raise_value_error_naming_the_argument():
    ev = SceneGraphEvaluator("predcls", ks=(5,), num_predicates=4)
    with pytest.raises(ValueError, match=r"rel_scores"):
        ev.add(GT1, {"rel_pairs": PRED1["rel_pairs"], "rel_scores": PRED1["rel_scores"][:, :3]})
    with pytest.raises(ValueError, match=r"rel_scores"):
        ev.add(GT1, {"rel_pairs": PRED1["rel_pairs"], "rel_scores": PRED1["rel_scores"][:5]})
    with pytest.raises(ValueError, match=r"rel_pairs"):
        ev.add(GT1, {"rel_pairs": PRED1["rel_pairs"] + 1, "rel_scores": PRED1["rel_scores"]})
    with pytest.raises(ValueError, match=r"relations"):
        ev.add(dict(GT1, relations=np.array([[0, 1, 4]])), PRED1)
    with pytest.raises(ValueError, match=r"labels"):
        ev.add(dict(GT1, labels=np.array([1, 2])), PRED1)
    with pytest.raises(ValueError, match=r"mode"):
        SceneGraphEvaluator("phrdet")
    with pytest.raises(ValueError, match=r"prediction\['scores'\]"):
        SceneGraphEvaluator("sgdet", ks=(5,), num_predicates=4).add(
            GT1, dict(PRED1, boxes=GT1["boxes"], labels=GT1["labels"], scores=np.ones(2)))


def test_format_metrics_table():
    res = _predcls_eval().compute()
    table = format_metrics(res, (1, 3, 5), ["bg", "p1", "p2", "p3"])
    rows = {line.split()[0]: line.split()[1:] for line in table.splitlines() if line.strip()}
    assert rows["metric"] == ["@1", "@3", "@5"]
    assert rows["R"] == ["0.00", "25.00", "25.00"]
    assert rows["ngR"] == ["0.00", "75.00", "87.50"]
    assert rows["mR"] == ["0.00", "33.33", "33.33"]
    assert rows["p2"] == ["50.00"] and rows["p3"] == ["0.00"]
