"""HyperAlign learning check on the shapes world (frozen pretrained tiny CLIP) and the Trainer loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vlplugins.hyperalign import HyperAlignModel
from vlplugins.hyperalign.data import normalise_mos, shapes_alignment_records
from vlplugins.hyperalign.evaluation import correlation_metrics
from vlplugins.hyperalign.training import train_hyperalign


@pytest.fixture(scope="module")
def setup():
    import transformers

    from vlplugins.hyperalign.demo import prepare

    transformers.logging.set_verbosity_error()
    return prepare(num_pairs=1200)  # tests/conftest.py runs the suite on one intra-op thread


def test_hyperalign_learns_on_held_out_prompts(setup):
    from vlplugins.hyperalign.demo import BUDGET

    model, emb = setup["model"], setup["emb"]
    test_mos = np.array([r["mos"] for r in setup["test"]])
    assert not {r["prompt"] for r in setup["test"]} & {r["prompt"] for r in setup["train"] + setup["val"]}
    model.eval()
    with torch.no_grad():
        before = model.head(*emb["test"]).scores.numpy()
    result = train_hyperalign(model, setup["train"], setup["val"],
                              embeddings={"train": emb["train"], "eval": emb["val"]}, **BUDGET)
    model.eval()
    with torch.no_grad():
        out = model.head(*emb["test"])
        val_pred = model.head(*emb["val"]).scores.numpy()
    after = out.scores.numpy()
    m = correlation_metrics(after, test_mos)
    print("held-out", m, "steps", result["steps"])
    assert m["srcc"] > 0.6 and m["plcc_raw"] > 0.6
    # learning, not only the pretrained cosine: the calibrated score fits the normalised MOS far better
    mse_before, mse_after = np.mean((before - test_mos) ** 2), np.mean((after - test_mos) ** 2)
    assert mse_after < 0.5 * mse_before
    assert float(out.b.std()) > 0 and float(out.a.std()) > 0  # the modulation depends on the geometry
    # early stopping restored the best validation state
    val_mos = normalise_mos([r["mos"] for r in setup["val"]], *result["mos_range"])
    assert abs(correlation_metrics(val_pred, val_mos)["srcc"] - result["best_srcc"]) < 1e-6


def test_trainer_on_raw_images_updates_head_only():
    import transformers

    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    model = HyperAlignModel.from_clip("preset:tiny-clip")
    clip_before = {k: v.clone() for k, v in model.clip.state_dict().items()}
    head_before = {k: v.clone() for k, v in model.head_state_dict().items()}
    recs = shapes_alignment_records(48, num_prompts=8)
    train = [r for r in recs if int(r["group"]) < 6]
    val = [r for r in recs if int(r["group"]) >= 6]
    res = train_hyperalign(model, train, val, epochs=2, batch_size=8, lr=1e-3, precompute=False)
    assert res["steps"] == 2 * int(np.ceil(len(train) / 8)) and len(res["history"]) == 2
    assert all(torch.equal(v, clip_before[k]) for k, v in model.clip.state_dict().items())
    changed = [k for k, v in model.head_state_dict().items() if not torch.equal(v, head_before[k])]
    assert "regressor.out.weight" in changed and "adapter_image.up.weight" in changed
