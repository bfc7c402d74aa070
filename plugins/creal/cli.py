"""``vlplugins creal train|eval``: train a CReaL head with ``transformers.Trainer`` and print SGG metrics.

Data: ``--data shapes`` (synthetic long-tailed shapes world, offline) or ``--data vg150`` with the split files
(``--vg-h5 VG-SGG-with-attri.h5 --vg-dicts VG-SGG-dicts.json --vg-image-data image_data.json --vg-images DIR``).
Features: RoIAlign over a frozen vision tower given by ``--backbone``: ``shapes-tiny-clip`` (tiny CLIP pretrained on
the shapes world), ``preset:<name>`` (random weights, e.g. ``preset:tiny-blip2-retrieval``) or a checkpoint directory.
Heavy imports happen inside the handlers so ``vlplugins --help`` stays fast.
"""

from __future__ import annotations

import argparse


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", choices=("shapes", "vg150"), default="shapes", help="dataset (default: shapes)")
    p.add_argument("--num-images", type=int, default=300, help="images to use (shapes: generated; vg150: first N)")
    p.add_argument("--num-objects", type=int, default=4, help="objects per synthetic scene")
    p.add_argument("--vg-h5", help="VG-SGG-with-attri.h5")
    p.add_argument("--vg-dicts", help="VG-SGG-dicts.json")
    p.add_argument("--vg-image-data", help="image_data.json")
    p.add_argument("--vg-images", help="folder with <image_id>.jpg")
    p.add_argument("--vg-num-val-im", type=int, default=5000, help="train-split images held out as val (standard 5000)")
    p.add_argument("--backbone", default="shapes-tiny-clip",
                   help="feature tower: shapes-tiny-clip | preset:<name> | checkpoint dir")
    p.add_argument("--roi-size", type=int, default=2, help="RoIAlign output side")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--seed", type=int, default=0)


def register(subparsers) -> None:
    """Add the ``creal`` family (``train``, ``eval``) to the ``vlplugins`` parser."""
    fam = subparsers.add_parser("creal", help="CReaL relation predictor for scene graph generation")
    sub = fam.add_subparsers(dest="creal_command", metavar="SUBCOMMAND")
    t = sub.add_parser("train", help="train a CReaL head (transformers.Trainer) and save it")
    _add_data_args(t)
    t.add_argument("--output-dir", required=True)
    t.add_argument("--epochs", type=float, default=5.0)
    t.add_argument("--batch-size", type=int, default=256)
    t.add_argument("--lr", type=float, default=3e-3)
    t.add_argument("--hidden-size", type=int, default=64)
    t.add_argument("--complex-dim", type=int, default=64)
    t.add_argument("--embed-dim", type=int, default=64)
    t.add_argument("--prototype-init", choices=("learned", "text"), default="learned")
    t.add_argument("--reweight", action="store_true", help="inverse-frequency re-weighted CE (the paper's variant)")
    t.add_argument("--num-hard-negatives", type=int, default=1)
    t.set_defaults(func=_cmd_train)
    e = sub.add_parser("eval", help="evaluate a saved CReaL head and print R@K / ngR@K / mR@K")
    _add_data_args(e)
    e.add_argument("--model", required=True, help="directory written by `vlplugins creal train`")
    e.add_argument("--mode", choices=("predcls",), default="predcls",
                   help="predcls (GT boxes+labels); SGCls/SGDet need an object classifier/detector: use the Python API")
    e.add_argument("--ks", type=int, nargs="+", default=[20, 50, 100])
    e.add_argument("--start", type=int, default=100_000, help="first synthetic scene index (held out from training)")
    e.add_argument("--split", default="test", help="vg150 split")
    e.set_defaults(func=_cmd_eval)
    fam.set_defaults(func=lambda args: (fam.print_help(), 0)[1])


def _extractor(args):
    from .features import RelationFeatureExtractor

    if args.backbone == "shapes-tiny-clip":
        from ..data.pretrain import pretrained_tiny_clip

        tower = pretrained_tiny_clip(seed=args.seed)
    elif args.backbone.startswith("preset:"):
        from ..hub.presets import build_from_preset

        tower = build_from_preset(args.backbone[len("preset:"):])
    else:
        from transformers import AutoModel

        tower = AutoModel.from_pretrained(args.backbone)
    return RelationFeatureExtractor(tower, output_size=args.roi_size).to(args.device)


def _load_data(args, split: str, start: int = 0):
    """(images, ground truths, predicate names, num object classes) for ``args.data``."""
    if args.data == "shapes":
        from ..data import OBJECT_CLASSES, PREDICATES
        from .data import shapes_scene_graphs

        images, gts = shapes_scene_graphs(start, args.num_images, num_objects=args.num_objects, seed=args.seed)
        return images, gts, list(PREDICATES), len(OBJECT_CLASSES)
    from .data import VG150Dataset

    for name in ("vg_h5", "vg_dicts", "vg_image_data", "vg_images"):
        if not getattr(args, name):
            raise ValueError(f"--{name.replace('_', '-')}: required with --data vg150")
    ds = VG150Dataset(split, args.vg_h5, args.vg_dicts, args.vg_image_data, img_dir=args.vg_images,
                      num_val_im=args.vg_num_val_im, seed=args.seed)
    items = [ds[i] for i in range(min(args.num_images, len(ds)))]
    return [im for im, _ in items], [gt for _, gt in items], ds.ind_to_predicates, ds.num_object_classes


class PairDataset:
    """Per-pair training examples (dicts of tensors) for ``transformers.Trainer``."""

    def __init__(self, inputs: dict, labels):
        from .pipeline import MODEL_INPUTS

        self.inputs = {k: inputs[k].cpu() for k in MODEL_INPUTS}
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        item = {k: v[i] for k, v in self.inputs.items()}
        item["labels"] = self.labels[i]
        return item


def _cmd_train(args) -> int:
    import numpy as np
    import torch
    from transformers import Trainer, TrainingArguments

    from .configuration import CReaLConfig
    from .data import relation_targets
    from .modeling import CReaLForRelationPrediction, predicate_text_embeddings
    from .pipeline import extract_relation_inputs

    torch.manual_seed(args.seed)
    ext = _extractor(args)
    images, gts, predicate_names, num_obj = _load_data(args, "train")
    inputs = extract_relation_inputs(ext, images, [g["boxes"] for g in gts], [g["labels"] for g in gts])
    labels = torch.as_tensor(relation_targets(gts, inputs["pairs"]))
    counts = np.bincount(labels.numpy(), minlength=len(predicate_names)).tolist()
    cfg = CReaLConfig(num_object_classes=num_obj, num_predicate_classes=len(predicate_names),
                      entity_dim=ext.feature_dim, union_dim=ext.feature_dim, hidden_size=args.hidden_size,
                      complex_dim=args.complex_dim, embed_dim=args.embed_dim, label_embed_dim=16, geometry_dim=64,
                      dropout=0.0, prototype_init=args.prototype_init,
                      loss_reweighting="inverse_frequency" if args.reweight else "none",
                      predicate_frequencies=counts, num_hard_negatives=args.num_hard_negatives,
                      prototype_text_dim=32, feature_backbone=args.backbone, feature_roi_size=args.roi_size,
                      predicate_names=list(predicate_names))
    text = None
    if args.prototype_init == "text":
        from ..data.pretrain import pretrained_tiny_clip

        text = predicate_text_embeddings(predicate_names, pretrained_tiny_clip(seed=args.seed))
        cfg.prototype_text_dim = text.shape[1]
    model = CReaLForRelationPrediction(cfg, predicate_text_embeds=text)
    targs = TrainingArguments(output_dir=args.output_dir, num_train_epochs=args.epochs,
                              per_device_train_batch_size=args.batch_size, learning_rate=args.lr, weight_decay=1e-4,
                              lr_scheduler_type="cosine", logging_steps=10, save_strategy="no", report_to=[],
                              seed=args.seed, use_cpu=args.device == "cpu", dataloader_num_workers=0)
    trainer = Trainer(model=model, args=targs, train_dataset=PairDataset(inputs, labels))
    result = trainer.train()
    model.save_pretrained(args.output_dir)
    print(f"trained on {len(labels)} pairs from {len(gts)} images; final loss {result.training_loss:.4f}; "
          f"saved to {args.output_dir}")
    return 0


def _cmd_eval(args) -> int:
    import numpy as np
    from transformers import AutoModel

    from .evaluation import SceneGraphEvaluator, format_metrics
    from .pipeline import extract_relation_inputs, predictions_per_image, relation_scores

    model = AutoModel.from_pretrained(args.model).to(args.device).eval()
    args.backbone = getattr(model.config, "feature_backbone", args.backbone)
    args.roi_size = getattr(model.config, "feature_roi_size", args.roi_size)
    ext = _extractor(args)
    images, gts, predicate_names, _ = _load_data(args, args.split, start=args.start)
    inputs = extract_relation_inputs(ext, images, [g["boxes"] for g in gts], [g["labels"] for g in gts])
    probs = relation_scores(model, inputs)
    objects = [{"boxes": g["boxes"], "labels": g["labels"], "scores": np.ones(len(g["labels"]))} for g in gts]
    ev = SceneGraphEvaluator(args.mode, ks=args.ks, num_predicates=model.config.num_predicate_classes)
    ev.add_batch(gts, predictions_per_image(inputs, probs, objects))
    results = ev.compute()
    print(f"{args.mode} on {results['num_images']} images")
    print(format_metrics(results, args.ks, predicate_names))
    return 0
