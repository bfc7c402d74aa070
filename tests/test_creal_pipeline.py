"""Features from images (RoIAlign over a frozen HF tower), SGDet with a tiny DETR, the learning check and the CLI."""

import math

import numpy as np
import pytest
import torch

import vlplugins  # noqa: F401
from vlplugins.creal import CReaLForRelationPrediction, LinearRelationPredictor, SceneGraphEvaluator
from vlplugins.creal.demo import demo_config, evaluate_predcls, shapes_relation_data, train_relation_model
from vlplugins.creal.features import RelationFeatureExtractor, all_ordered_pairs, prepare_detections
from vlplugins.creal.pipeline import extract_relation_inputs, predictions_per_image, relation_scores
from vlplugins.hub import build_from_preset

from creal_reference import reference_eval



def _bilinear(fm, y, x):
    """torchvision's roi_align bilinear sample of fm (C, H, W) at (y, x), with its border rules."""
    c, h, w = fm.shape
    if y < -1.0 or y > h or x < -1.0 or x > w:
        return np.zeros(c)
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = int(math.floor(y)), int(math.floor(x))
    if y0 >= h - 1:
        y0 = y1 = h - 1
        y = float(y0)
    else:
        y1 = y0 + 1
    if x0 >= w - 1:
        x0 = x1 = w - 1
        x = float(x0)
    else:
        x1 = x0 + 1
    ly, lx = y - y0, x - x0
    return ((1 - ly) * (1 - lx) * fm[:, y0, x0] + (1 - ly) * lx * fm[:, y0, x1] + ly * (1 - lx) * fm[:, y1, x0]
            + ly * lx * fm[:, y1, x1])


def _roi_align_ref(fm, box, scale, out=2, ratio=2):
    """RoIAlign (aligned=True) of one box in float64, flattened like (C, out, out)."""
    x1, y1, x2, y2 = (v * scale - 0.5 for v in box)
    bh, bw = (y2 - y1) / out, (x2 - x1) / out
    res = np.zeros((fm.shape[0], out, out))
    for i in range(out):
        for j in range(out):
            acc = np.zeros(fm.shape[0])
            for a in range(ratio):
                for b in range(ratio):
                    acc += _bilinear(fm, y1 + i * bh + (a + 0.5) * bh / ratio, x1 + j * bw + (b + 0.5) * bw / ratio)
            res[:, i, j] = acc / ratio**2
    return res.reshape(-1)


@pytest.mark.parametrize("preset", ["tiny-clip", "tiny-blip2-retrieval"])
def test_extractor_features_match_reference_roi_align(preset):
    model = build_from_preset(preset)
    ext = RelationFeatureExtractor(model)
    assert not any(p.requires_grad for p in ext.parameters())
    g = torch.Generator().manual_seed(0)
    px = torch.randn(2, 3, 32, 32, generator=g)
    boxes = [torch.tensor([[0.0, 0, 16, 16], [8, 4, 30, 20], [2, 20, 12, 31]]), torch.tensor([[5.0, 5, 25, 9],
                                                                                           [0, 0, 32, 32]])]
    out = ext(px, boxes)
    assert out["subject_features"].shape == (6 + 2, 64 * 4) and ext.feature_dim == 256
    assert out["image_index"].tolist() == [0] * 6 + [1] * 2
    with torch.no_grad():
        hidden = model.vision_model(pixel_values=px).last_hidden_state[:, 1:].double()  # drop CLS
    fmaps = hidden.transpose(1, 2).reshape(2, 64, 4, 4).numpy()
    for r, (img, (s, o)) in enumerate([(0, p) for p in all_ordered_pairs(3).tolist()] +
                                      [(1, p) for p in all_ordered_pairs(2).tolist()]):
        bs, bo = boxes[img][s].tolist(), boxes[img][o].tolist()
        bu = [min(bs[0], bo[0]), min(bs[1], bo[1]), max(bs[2], bo[2]), max(bs[3], bo[3])]
        for key, box in (("subject_features", bs), ("object_features", bo), ("union_features", bu)):
            ref = _roi_align_ref(fmaps[img], box, 4 / 32)
            np.testing.assert_allclose(out[key][r].numpy(), ref, rtol=1e-4, atol=1e-5)
        assert out["pair_boxes"][r].tolist() == bs + bo
    # the same tower saved as a checkpoint gives the same features
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        ext2 = RelationFeatureExtractor.from_pretrained(tmp)
    assert torch.equal(ext2(px, boxes)["union_features"], out["union_features"])
    with pytest.raises(ValueError, match=r"boxes\[0\]"):
        ext(px, [torch.tensor([[10.0, 0, 5, 8]]), boxes[1]])  # x2 < x1
    with pytest.raises(ValueError, match=r"boxes\[1\]"):
        ext(px, [boxes[0], torch.tensor([[0.0, 0, 40, 8]])])  # outside the 32 x 32 image
    with pytest.raises(ValueError, match="boxes"):
        ext(px, boxes[:1])


def test_sgdet_end_to_end_with_a_tiny_detr():
    from transformers import DetrConfig, DetrForObjectDetection, DetrImageProcessor, ResNetConfig

    from vlplugins.creal.data import shapes_scene_graphs

    backbone = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 16, 16], depths=[1, 1, 1, 1],
                            out_features=["stage4"], layer_type="basic")
    cfg = DetrConfig(backbone_config=backbone, use_timm_backbone=False, use_pretrained_backbone=False, d_model=16,
                     encoder_layers=1, decoder_layers=1, encoder_ffn_dim=32, decoder_ffn_dim=32,
                     encoder_attention_heads=2, decoder_attention_heads=2, num_queries=10, num_labels=12)
    torch.manual_seed(0)
    detr = DetrForObjectDetection(cfg).eval()
    images, gts = shapes_scene_graphs(0, 2, num_objects=3)
    from vlplugins.data import images_to_tensor

    with torch.no_grad():
        det_out = detr(pixel_values=images_to_tensor(images))
    raw = DetrImageProcessor().post_process_object_detection(det_out, threshold=0.0, target_sizes=[(32, 32)] * 2)
    # DETR's labels are 0-based over the 12 foreground classes: offset 1 maps them onto 1..12
    dets = [prepare_detections(r, (32, 32), num_object_classes=13, label_offset=1, max_detections=5) for r in raw]
    for d in dets:
        assert d["boxes"].shape == (5, 4) and d["labels"].min() >= 1 and d["labels"].max() <= 12
        assert (d["boxes"] >= 0).all() and (d["boxes"] <= 32).all() and torch.all(d["scores"][:-1] >= d["scores"][1:])
    ext = RelationFeatureExtractor(build_from_preset("tiny-clip"))
    inputs = extract_relation_inputs(ext, images, [d["boxes"] for d in dets], [d["labels"] for d in dets])
    assert inputs["subject_features"].shape[0] == 2 * 20  # all ordered pairs of 5 detections, per image
    torch.manual_seed(0)
    model = CReaLForRelationPrediction(demo_config(ext.feature_dim))
    probs = relation_scores(model, inputs)
    preds = predictions_per_image(inputs, probs, [{k: d[k].numpy() for k in ("boxes", "labels", "scores")}
                                                  for d in dets])
    ev = SceneGraphEvaluator("sgdet", ks=(5, 20), num_predicates=8)
    ev.add_batch(gts, preds)
    res = ev.compute()
    ref = reference_eval(list(zip(gts, preds)), (5, 20), 8)
    for key, val in ref.items():
        assert res[key] == pytest.approx(val, abs=1e-12), key
    bad = {"boxes": torch.tensor([[0.0, 0, 4, 4], [1, 1, 5, 5]]), "labels": torch.tensor([0, 3]),
           "scores": torch.tensor([0.9, 0.8])}
    with pytest.raises(ValueError, match="labels"):
        prepare_detections(bad, (32, 32), num_object_classes=13)  # 0 is background
    # boxes overshooting the image are clipped to it; order follows the scores
    d = prepare_detections({"boxes": torch.tensor([[-2.0, 3, 40, 8], [1, 1, 5, 5]]), "labels": torch.tensor([2, 3]),
                            "scores": torch.tensor([0.2, 0.8])}, (32, 30), num_object_classes=13)
    assert d["boxes"].tolist() == [[1, 1, 5, 5], [0, 3, 32, 8]] and d["labels"].tolist() == [3, 2]


def test_creal_learns_the_long_tailed_synthetic_predicates():
    # Frozen random tiny-CLIP tower (fast, deterministic) + box geometry + labels; predicates are functions of the
    # geometry, so the head must learn them. Test scenes have 8 objects (56 ordered pairs).
    ext = RelationFeatureExtractor(build_from_preset("tiny-clip"))
    data = shapes_relation_data(num_train=150, num_test=40, extractor=ext)
    cfg = demo_config(data["feature_dim"])
    torch.manual_seed(0)
    creal = CReaLForRelationPrediction(cfg)
    losses = train_relation_model(creal, data["train"], data["train_labels"], steps=150)
    torch.manual_seed(0)
    linear = LinearRelationPredictor(cfg)
    train_relation_model(linear, data["train"], data["train_labels"], steps=150, lr=1e-2)
    r_creal = evaluate_predcls(creal, data["test"], data["test_gts"])
    r_lin = evaluate_predcls(linear, data["test"], data["test_gts"])
    # chance: uniform random relation scores on the same test images
    rng = np.random.default_rng(0)
    ev = SceneGraphEvaluator("predcls", ks=(50,), num_predicates=8)
    for gt, p in zip(data["test_gts"], data["test"]["pairs"]):
        ev.add(gt, {"rel_pairs": p.numpy(), "rel_scores": rng.random((len(p), 8))})
    chance = ev.compute()["mR@50"]
    print(f"mR@50 creal={r_creal['mR@50']:.3f} linear={r_lin['mR@50']:.3f} chance={chance:.3f}; "
          f"R@50 creal={r_creal['R@50']:.3f} linear={r_lin['R@50']:.3f}")
    assert np.mean(losses[-20:]) < 0.85 * np.mean(losses[:20])
    assert chance < 0.2
    assert r_creal["mR@50"] > 0.45 and r_creal["mR@50"] > 3 * chance
    assert r_creal["mR@50"] > r_lin["mR@50"] + 0.1
    assert r_creal["R@50"] > 0.55


def test_cli_train_and_eval(tmp_path, capsys):
    from transformers import AutoModel

    from vlplugins.cli import main

    out_dir = tmp_path / "run"
    assert main(["creal", "train", "--backbone", "preset:tiny-clip", "--num-images", "24", "--epochs", "2",
                 "--batch-size", "64", "--output-dir", str(out_dir)]) == 0
    assert (out_dir / "model.safetensors").is_file() and (out_dir / "README.md").is_file()
    capsys.readouterr()
    assert main(["creal", "eval", "--model", str(out_dir), "--num-images", "10", "--ks", "5", "20"]) == 0
    text = capsys.readouterr().out
    rows = {line.split()[0]: line.split()[1:] for line in text.splitlines() if line.strip()}
    # the printed table equals the Python API's numbers on the same held-out scenes
    model = AutoModel.from_pretrained(out_dir)
    assert model.config.feature_backbone == "preset:tiny-clip"
    from vlplugins.creal.data import shapes_scene_graphs

    images, gts = shapes_scene_graphs(100_000, 10, num_objects=4)
    ext = RelationFeatureExtractor(build_from_preset("tiny-clip"))
    inputs = extract_relation_inputs(ext, images, [g["boxes"] for g in gts], [g["labels"] for g in gts])
    res = evaluate_predcls(model, inputs, gts, ks=(5, 20))
    assert rows["R"] == [f"{100 * res['R@5']:.2f}", f"{100 * res['R@20']:.2f}"]
    assert rows["mR"] == [f"{100 * res['mR@5']:.2f}", f"{100 * res['mR@20']:.2f}"]
