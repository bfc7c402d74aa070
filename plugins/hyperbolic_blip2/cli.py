"""``vlplugins hyperbolic-blip2 {train, eval-retrieval, radius-histogram}``.

* ``train``: BLIP-2 stage-1 style training of the hyperbolic head (+ Q-Former) with transformers' ``Trainer``
  (accelerate underneath: ``accelerate launch -m vlplugins.cli hyperbolic-blip2 train ...`` or ``torchrun`` for
  multi-GPU / multi-node; ``--bf16`` / ``--fp16`` for mixed precision) on COCO-Karpathy-style caption JSON + an
  image folder.
* ``eval-retrieval``: two-stage TR/IR@1/5/10 (ITC top-k, ITM re-rank) on a COCO-5K-style test JSON.
* ``radius-histogram``: PNG with the image and text radius histograms of a caption JSON.

``--tokenizer shapes`` uses the offline shapes-world WordPiece tokenizer (tests/demos); otherwise it is passed to
``AutoTokenizer.from_pretrained`` (e.g. ``Salesforce/blip2-itm-vit-g``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _tokenizer(name: str):
    if name == "shapes":
        from .demo import shapes_tokenizer

        return shapes_tokenizer()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(name)


def _load_model(ref: str, **config_kwargs):
    """A saved hyperbolic model directory/repo (``from_pretrained``) or a BLIP-2 base (``from_base``)."""
    from .modeling import HyperbolicBlip2ForImageTextRetrieval

    cfg = Path(ref) / "config.json"
    if cfg.is_file() and json.loads(cfg.read_text()).get("model_type") == "hyperbolic_blip2":
        return HyperbolicBlip2ForImageTextRetrieval.from_pretrained(ref)
    return HyperbolicBlip2ForImageTextRetrieval.from_base(ref, **config_kwargs)


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ann-json", required=True, help="COCO-Karpathy-style caption JSON (LAVIS list or dataset_coco)")
    p.add_argument("--image-root", default="", help="folder the JSON's image paths are relative to")
    p.add_argument("--split", default=None, help="split for Karpathy's dataset_coco.json (train/val/test)")
    p.add_argument("--tokenizer", default="Salesforce/blip2-itm-vit-g", help="tokenizer id/dir, or 'shapes'")
    p.add_argument("--image-size", type=int, default=None, help="default: the base model's vision image_size")
    p.add_argument("--mean", type=float, nargs=3, default=None, help="pixel mean (default: CLIP's)")
    p.add_argument("--std", type=float, nargs=3, default=None, help="pixel std (default: CLIP's)")
    p.add_argument("--max-length", type=int, default=32)


def _collator(args, model, tokenizer, return_loss: bool):
    from .data import HyperbolicBlip2Collator

    size = args.image_size or model.base.config.vision_config.image_size
    kw = {}
    if args.mean is not None:
        kw["mean"] = tuple(args.mean)
    if args.std is not None:
        kw["std"] = tuple(args.std)
    return HyperbolicBlip2Collator(tokenizer, image_size=size, max_length=args.max_length, return_loss=return_loss,
                                   **kw)


def _encode_eval_set(args, model, tokenizer):
    from PIL import Image

    from .data import read_coco_karpathy

    items = read_coco_karpathy(args.ann_json, args.image_root, split=args.split)
    if args.max_images:
        items = items[: args.max_images]
    collate = _collator(args, model, tokenizer, return_loss=False)
    images = []
    for it in items:
        with Image.open(it.image_path) as im:
            images.append(im.convert("RGB"))
    pixel_values = collate.images(images)
    texts, text_image_ids = [], []
    for i, it in enumerate(items):
        texts += it.captions
        text_image_ids += [i] * len(it.captions)
    tok = tokenizer(texts, padding="longest", truncation=True, max_length=args.max_length, return_tensors="pt")
    return pixel_values, tok["input_ids"], tok["attention_mask"], text_image_ids


def _cmd_train(args) -> int:
    import torch
    from transformers import Trainer, TrainingArguments

    from .data import CaptionPairDataset, read_coco_karpathy

    torch.manual_seed(args.seed)
    model = _load_model(args.base, curvature=args.curvature, learn_curvature=args.learn_curvature,
                        rqs_p=args.rqs_p, rtp_max_span=args.rtp_max_span, loss_type=args.loss_type,
                        use_itm=not args.no_itm, freeze_vision=not args.unfreeze_vision)
    if args.unfreeze_vision:
        model.base.vision_model.requires_grad_(True)
        model.config.freeze_vision = False
        if "vision_model" not in model.config.trained_base_modules:
            model.config.trained_base_modules.append("vision_model")
    tokenizer = _tokenizer(args.tokenizer)
    dataset = CaptionPairDataset(read_coco_karpathy(args.ann_json, args.image_root, split=args.split))
    training_args = TrainingArguments(
        output_dir=args.output_dir, per_device_train_batch_size=args.batch_size, learning_rate=args.lr,
        num_train_epochs=args.epochs, max_steps=args.max_steps, weight_decay=0.05, adam_beta1=0.9, adam_beta2=0.98,
        lr_scheduler_type="cosine", warmup_steps=args.warmup_steps, logging_steps=args.logging_steps,
        save_strategy="no", report_to=[], remove_unused_columns=False, seed=args.seed, bf16=args.bf16,
        fp16=args.fp16, dataloader_num_workers=args.num_workers, use_cpu=not torch.cuda.is_available(),
        dataloader_drop_last=True,
    )
    trainer = Trainer(model=model, args=training_args, train_dataset=dataset,
                      data_collator=_collator(args, model, tokenizer, return_loss=True))
    result = trainer.train()
    trainer.save_model(args.output_dir)
    if trainer.is_world_process_zero():
        print(json.dumps({"train_loss": result.training_loss, "steps": result.global_step,
                          "output_dir": args.output_dir}))
    return 0


def _cmd_eval(args) -> int:
    import torch

    from .evaluation import evaluate_retrieval

    model = _load_model(args.model)
    device = torch.device(args.device)
    model.to(device)
    tokenizer = _tokenizer(args.tokenizer)
    pixel_values, ids, mask, text_image_ids = _encode_eval_set(args, model, tokenizer)
    metrics = evaluate_retrieval(model, pixel_values, ids, mask, text_image_ids, k_test=args.k_test,
                                 batch_size=args.batch_size)
    text = json.dumps(metrics, indent=2)
    print(text)
    if args.output:
        Path(args.output).write_text(text)
    return 0


def _cmd_hist(args) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    model = _load_model(args.model).eval()
    tokenizer = _tokenizer(args.tokenizer)
    pixel_values, ids, mask, _ = _encode_eval_set(args, model, tokenizer)
    with torch.no_grad():
        img_r = torch.cat([model.encode_image(pixel_values[s:s + 64]).radius for s in range(0, len(pixel_values), 64)])
        txt_r = torch.cat([model.encode_text(ids[s:s + 256], mask[s:s + 256]).radius for s in range(0, len(ids), 256)])
    img_r = (img_r.mean(dim=1) if args.image_radius == "mean" else img_r.flatten()).float().numpy()
    txt_r = txt_r.float().numpy()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(img_r, bins=args.bins, alpha=0.6, label=f"image ({args.image_radius} over queries), n={len(img_r)}")
    ax.hist(txt_r, bins=args.bins, alpha=0.6, label=f"text, n={len(txt_r)}")
    ax.set_xlabel("hyperbolic radius d(0, x)")
    ax.set_ylabel("count")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.output, dpi=120)
    plt.close(fig)
    summary = {"output": args.output, "image_radius_mean": float(img_r.mean()), "text_radius_mean": float(txt_r.mean()),
               "num_images": int(pixel_values.shape[0]), "num_texts": int(ids.shape[0])}
    print(json.dumps(summary))
    return 0


def register(subparsers) -> None:
    """Add the ``hyperbolic-blip2`` command family to the ``vlplugins`` parser."""
    family = subparsers.add_parser("hyperbolic-blip2", help="hyperbolic BLIP-2 head: train, evaluate, radius plots")
    sub = family.add_subparsers(dest="hb_command", metavar="SUBCOMMAND", required=True)

    p = sub.add_parser("train", help="train with transformers' Trainer on COCO-Karpathy-style captions")
    _add_data_args(p)
    p.add_argument("--base", default="Salesforce/blip2-itm-vit-g",
                   help="BLIP-2 retrieval base (Hub id / dir / preset:<name>) or a saved hyperbolic model dir")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--max-steps", type=int, default=-1)
    p.add_argument("--warmup-steps", type=int, default=0)
    p.add_argument("--logging-steps", type=int, default=50)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--curvature", type=float, default=1.0)
    p.add_argument("--learn-curvature", action="store_true")
    p.add_argument("--rqs-p", type=float, default=0.5)
    p.add_argument("--rtp-max-span", type=int, default=7)
    p.add_argument("--loss-type", choices=("cosine", "poincare_distance"), default="cosine")
    p.add_argument("--no-itm", action="store_true", help="ITC only")
    p.add_argument("--unfreeze-vision", action="store_true", help="train the vision tower too")
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--fp16", action="store_true")
    p.set_defaults(func=_cmd_train, max_images=None)

    p = sub.add_parser("eval-retrieval", help="two-stage TR/IR@1/5/10 (ITC top-k + ITM re-rank)")
    _add_data_args(p)
    p.add_argument("--model", required=True, help="saved hyperbolic model dir/repo, or a BLIP-2 base")
    p.add_argument("--k-test", type=int, default=128, help="ITM re-ranking depth (0 = ITC only)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-images", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--output", default=None, help="write the metrics JSON here too")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("radius-histogram", help="PNG of image vs text radius histograms")
    _add_data_args(p)
    p.add_argument("--model", required=True)
    p.add_argument("--output", required=True, help="PNG path")
    p.add_argument("--bins", type=int, default=40)
    p.add_argument("--image-radius", choices=("mean", "all"), default="mean",
                   help="per image: mean over queries, or every query's radius")
    p.add_argument("--max-images", type=int, default=None)
    p.set_defaults(func=_cmd_hist)
