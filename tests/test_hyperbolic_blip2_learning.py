"""Learning check on the shapes world: the hyperbolic head (RQS + RTP) learns retrieval and its text radius separates
the coarsest captions (level 0, "a shape") from the most specific ones (level 4)."""

from __future__ import annotations

import pytest
import torch

from vlplugins.hyperbolic_blip2.demo import evaluate_shapes, learning_check, shapes_tokenizer, tiny_base

pytestmark = pytest.mark.slow
PRETRAIN_STEPS, LEARN_STEPS = 200, 150  # the demo's defaults


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    torch.manual_seed(0)
    return learning_check(tmp_path_factory.mktemp("hb_learning"), arms=("hyperbolic",),
                          steps=LEARN_STEPS, pretrain_steps=PRETRAIN_STEPS)


def test_hyperbolic_head_learns_retrieval(trained):
    m = trained["hyperbolic"]["metrics"]
    chance = 100.0 / trained["test"].pixel_values.shape[0]  # 200 held-out scenes: 0.5%
    assert m["tr1"] >= 10 * chance and m["ir1"] >= 10 * chance, m
    # the random-init model (same architecture and init, no training) is at chance level
    from vlplugins.hyperbolic_blip2 import HyperbolicBlip2ForImageTextRetrieval

    untrained = HyperbolicBlip2ForImageTextRetrieval.from_base(tiny_base(0))
    before = evaluate_shapes(untrained, trained["test"], shapes_tokenizer())
    assert before["r1"] <= 4 * chance < m["r1"] / 3, (m, before)


def test_text_radius_separates_coarse_from_specific_captions(trained):
    m = trained["hyperbolic"]["metrics"]
    # AUC of level-4 vs level-0 radii far from 0.5 and a strong rank correlation with the caption level.
    # With the paper's cosine ITC the loss is invariant to the radius, so its sign is not set by the loss: in this
    # tiny model coarse captions end up *farther* from the origin (negative correlation), reported by the demo.
    assert abs(m["auc"] - 0.5) >= 0.35, m
    assert abs(m["rho"]) >= 0.5, m
    assert m["radius_l0"] != m["radius_l4"]
