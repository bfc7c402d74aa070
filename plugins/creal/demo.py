"""CReaL learning check on the synthetic long-tailed shapes world: CReaL vs a linear predictor, same features/budget.

Features: RoIAlign over the patch grid of the shapes-pretrained tiny CLIP (``vlplugins.data.pretrain``), plus the
pair box geometry and object labels (PredCls). Predicates are functions of box geometry with a Zipf-like long tail,
so mean recall rewards getting the rare predicates ("inside", "overlapping") right.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..data import OBJECT_CLASSES, PREDICATES

KS = (20, 50, 100)


def shapes_relation_data(num_train: int = 300, num_test: int = 100, num_objects: int = 4, test_num_objects: int = 8,
                         seed: int = 0, extractor=None) -> dict:
    """Pair features and targets of the synthetic long-tailed set (train scenes ``0..``, test scenes ``100000..``).

    Test scenes have more objects (8: 56 ordered pairs per image) so that R@20 < R@50 < R@100 can differ.

    Returns:
        ``{"train": inputs, "train_labels": (R,) predicates (0 = unannotated pair), "test": inputs, "test_gts": list,
        "feature_dim": int}`` where ``inputs`` is :func:`~vlplugins.creal.pipeline.extract_relation_inputs`' dict.
    """
    from ..data.pretrain import pretrained_tiny_clip
    from .data import relation_targets, shapes_scene_graphs
    from .features import RelationFeatureExtractor
    from .pipeline import extract_relation_inputs

    if extractor is None:
        extractor = RelationFeatureExtractor(pretrained_tiny_clip(seed=seed))
    ims, gts = shapes_scene_graphs(0, num_train, num_objects=num_objects, seed=seed)
    tims, tgts = shapes_scene_graphs(100_000, num_test, num_objects=test_num_objects, seed=seed)
    train = extract_relation_inputs(extractor, ims, [g["boxes"] for g in gts], [g["labels"] for g in gts])
    test = extract_relation_inputs(extractor, tims, [g["boxes"] for g in tgts], [g["labels"] for g in tgts])
    return {"train": train, "train_labels": torch.as_tensor(relation_targets(gts, train["pairs"])), "test": test,
            "test_gts": tgts, "train_gts": gts, "feature_dim": extractor.feature_dim}


def demo_config(feature_dim: int, **overrides):
    """Small CReaL config for the shapes world (13 object classes, 8 predicates incl. background)."""
    from .configuration import CReaLConfig

    kwargs = dict(num_object_classes=len(OBJECT_CLASSES), num_predicate_classes=len(PREDICATES),
                  entity_dim=feature_dim, union_dim=feature_dim, hidden_size=64, complex_dim=64, embed_dim=64,
                  label_embed_dim=16, geometry_dim=64, dropout=0.0)
    kwargs.update(overrides)
    return CReaLConfig(**kwargs)


def train_relation_model(model, inputs: dict, labels: torch.Tensor, steps: int = 300, lr: float = 3e-3,
                         batch_size: int = 256, seed: int = 0) -> list[float]:
    """AdamW on random mini-batches of pairs (all pairs, unannotated ones as background); returns the losses."""
    from .pipeline import MODEL_INPUTS

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    model.train()
    losses = []
    for _ in range(steps):
        idx = torch.randint(len(labels), (batch_size,), generator=gen)
        out = model(**{k: inputs[k][idx] for k in MODEL_INPUTS}, labels=labels[idx])
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        losses.append(float(out.loss.detach()))
    model.eval()
    return losses


def evaluate_predcls(model, inputs: dict, gts: list, ks=KS, train_triplets=None) -> dict:
    """PredCls metrics of ``model`` on pre-extracted ``inputs`` (GT boxes/labels, object scores 1)."""
    from .evaluation import SceneGraphEvaluator
    from .pipeline import predictions_per_image, relation_scores

    probs = relation_scores(model, inputs)
    objects = [{"boxes": g["boxes"], "labels": g["labels"], "scores": np.ones(len(g["labels"]))} for g in gts]
    ev = SceneGraphEvaluator("predcls", ks=ks, num_predicates=len(PREDICATES), train_triplets=train_triplets)
    ev.add_batch(gts, predictions_per_image(inputs, probs, objects))
    return ev.compute()


def run_demo(workdir: Path, steps: int = 300, num_train: int = 300, num_test: int = 100,
             data: Optional[dict] = None) -> list:
    """Train CReaL and the linear baseline with the same budget; save + reload CReaL; return the demo rows."""
    return _run_demo(Path(workdir), steps, num_train, num_test, data)


def _run_demo(workdir: Path, steps: int, num_train: int, num_test: int, data: Optional[dict]) -> list:
    from transformers import AutoModel

    from ..demo import DemoRow
    from .modeling import CReaLForRelationPrediction, LinearRelationPredictor

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    data = data or shapes_relation_data(num_train, num_test)
    cfg = demo_config(data["feature_dim"])
    t0 = time.perf_counter()
    torch.manual_seed(0)
    creal = CReaLForRelationPrediction(cfg)
    train_relation_model(creal, data["train"], data["train_labels"], steps=steps, lr=3e-3)
    t_creal = time.perf_counter() - t0
    torch.manual_seed(0)
    linear = LinearRelationPredictor(cfg)
    t0 = time.perf_counter()
    train_relation_model(linear, data["train"], data["train_labels"], steps=steps, lr=1e-2)
    t_linear = time.perf_counter() - t0
    path = workdir / "creal-shapes"
    creal.save_pretrained(path)
    reloaded = AutoModel.from_pretrained(path)
    r_plugin = evaluate_predcls(reloaded, data["test"], data["test_gts"])
    r_base = evaluate_predcls(linear, data["test"], data["test_gts"])
    shared = time.perf_counter() - start - t_creal - t_linear
    rows = [DemoRow("creal", f"PredCls {m} (synthetic long-tail)", r_plugin[m], r_base[m], shared + t_creal)
            for m in ("R@50", "R@100", "mR@50", "mR@100")]
    return rows
