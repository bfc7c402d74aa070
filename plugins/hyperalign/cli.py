"""``vlplugins hyperalign score|train|eval``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers) -> None:
    """Add the ``hyperalign`` command family to the ``vlplugins`` parser."""
    p = subparsers.add_parser("hyperalign", help="HyperAlign text-to-image alignment reward model")
    sub = p.add_subparsers(dest="hyperalign_command", metavar="SUBCOMMAND")

    s = sub.add_parser("score", help="score image/prompt pairs with a trained model")
    s.add_argument("--model", required=True, help="checkpoint directory or Hub repo id")
    s.add_argument("image", nargs="?", help="image file")
    s.add_argument("prompt", nargs="?", help="prompt text")
    s.add_argument("--pairs", help="csv with columns image,prompt (instead of IMAGE PROMPT)")
    s.add_argument("--batch-size", type=int, default=32)
    s.add_argument("--device", default=None, help="cpu / cuda (default: cuda if available)")
    s.add_argument("--details", action="store_true", help="also print cosine, d_L, phi, delta, a, b, g")
    s.set_defaults(func=_cmd_score)

    t = sub.add_parser("train", help="train on a database split (prompt-disjoint) and save the head")
    _dataset_args(t)
    t.add_argument("--backbone", default="openai/clip-vit-base-patch16",
                   help="CLIP Hub id / directory / preset:<name> / vlplugins:pretrained-tiny-clip, or an open_clip "
                        "model name with --open-clip")
    t.add_argument("--open-clip", action="store_true", help="the backbone is an open_clip model name")
    t.add_argument("--open-clip-pretrained", default=None, help="open_clip pretrained tag or local checkpoint file")
    t.add_argument("--output", default="hyperalign-model", help="where the trained head is saved")
    t.add_argument("--epochs", type=float, default=20)
    t.add_argument("--batch-size", type=int, default=8)
    t.add_argument("--lr", type=float, default=1e-4)
    t.add_argument("--scalar-lr", type=float, default=1e-3)
    t.add_argument("--weight-decay", type=float, default=1e-4)
    t.add_argument("--patience", type=int, default=3)
    t.add_argument("--lambda-ent", type=float, default=1.0)
    t.add_argument("--entail-mode", default="score_weighted", choices=["score_weighted", "scaled_aperture", "meru"])
    t.add_argument("--learn-curv", action="store_true")
    t.add_argument("--repeats", type=int, default=1,
                   help="train on this many prompt-disjoint splits (seeds split-seed, split-seed+1, ...) and print "
                        "the median/mean of the test metrics")
    t.add_argument("--device", default=None)
    t.set_defaults(func=_cmd_train)

    e = sub.add_parser("eval", help="SRCC / KRCC / PLCC of a trained model on a database (or its test split)")
    _dataset_args(e)
    e.add_argument("--model", required=True, help="checkpoint directory or Hub repo id")
    e.add_argument("--all", action="store_true", help="evaluate on every record instead of the test split "
                                                       "(cross-dataset evaluation)")
    e.add_argument("--plot", default=None, help="write a predicted-vs-MOS scatter PNG here")
    e.add_argument("--batch-size", type=int, default=32)
    e.add_argument("--device", default=None)
    e.set_defaults(func=_cmd_eval)
    p.set_defaults(func=lambda args: (p.print_help(), 0)[1])


def _dataset_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", required=True, choices=["agiqa3k", "aigciqa2023", "pku_i2iqa", "shapes"])
    p.add_argument("--data-dir", default=None, help="database folder in its published layout")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the prompt-disjoint train/test split")
    p.add_argument("--count", type=int, default=640, help="number of pairs (synthetic 'shapes' dataset only)")


def _device(name):
    import torch

    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


def _records(args):
    from .data import load_dataset

    kwargs = {"count": args.count} if args.dataset == "shapes" else {}
    return load_dataset(args.dataset, args.data_dir, **kwargs)


def _split(args, records):
    from .data import TRAIN_FRACTION, prompt_disjoint_split

    return prompt_disjoint_split(records, TRAIN_FRACTION[args.dataset], seed=args.split_seed)


def _cmd_score(args) -> int:
    import csv

    from .modeling import HyperAlignModel

    if args.pairs:
        with open(args.pairs, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        images, prompts = [r["image"] for r in rows], [r["prompt"] for r in rows]
    else:
        if not args.image or args.prompt is None:
            raise SystemExit("hyperalign score: give IMAGE PROMPT or --pairs CSV")
        images, prompts = [args.image], [args.prompt]
    model = HyperAlignModel.from_pretrained(args.model).to(_device(args.device))
    out = model.score(images, prompts, batch_size=args.batch_size, return_details=True)
    for i, (img, prompt) in enumerate(zip(images, prompts)):
        row = {"image": str(img), "prompt": prompt, "score": float(out["scores"][i])}
        if args.details:
            row.update({k: float(out[k][i]) for k in ("cosine", "d_L", "phi", "delta", "a", "b", "g")})
        print(json.dumps(row))
    return 0


def _cmd_train(args) -> int:
    from .evaluation import aggregate

    records = _records(args)
    seeds = [args.split_seed + r for r in range(args.repeats)]
    runs = []
    for seed in seeds:
        out = Path(args.output) if len(seeds) == 1 else Path(args.output) / f"split_seed_{seed}"
        runs.append(_train_one(args, records, seed, out))
        print(json.dumps(runs[-1]))
    if len(runs) > 1:
        # the paper's protocol: repeated prompt-disjoint splits, aggregated by median and mean
        print(json.dumps({"aggregate": aggregate([r["test"] for r in runs]), "seeds": seeds}))
    return 0


def _train_one(args, records, seed: int, out: Path) -> dict:
    import torch

    from .data import TRAIN_FRACTION, prompt_disjoint_split
    from .evaluation import correlation_metrics, scatter_plot
    from .modeling import HyperAlignModel
    from .training import encode_records, train_hyperalign

    tr, te = prompt_disjoint_split(records, TRAIN_FRACTION[args.dataset], seed=seed)
    train_all = [records[i] for i in tr]
    a, b = prompt_disjoint_split(train_all, 0.8, seed=seed + 1)  # validation prompts disjoint from train
    train, val, test = [train_all[i] for i in a], [train_all[i] for i in b], [records[i] for i in te]
    kwargs = dict(lambda_ent=args.lambda_ent, entail_mode=args.entail_mode, learn_curv=args.learn_curv)
    torch.manual_seed(seed)
    if args.open_clip:
        model = HyperAlignModel.from_open_clip(args.backbone, pretrained=args.open_clip_pretrained, **kwargs)
    else:
        model = HyperAlignModel.from_clip(args.backbone, **kwargs)
    model.to(_device(args.device))
    all_mos = [r["mos"] for r in records]
    result = train_hyperalign(model, train, val, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                              scalar_lr=args.scalar_lr, weight_decay=args.weight_decay, patience=args.patience,
                              seed=seed, mos_range=(min(all_mos), max(all_mos)))
    img, txt = encode_records(model, test)
    model.eval()
    with torch.no_grad():
        pred = model.head(img.to(model.device), txt.to(model.device)).scores.float().cpu().numpy()
    metrics = correlation_metrics(pred, [r["mos"] for r in test])
    model.config.eval_table = [[f"{args.dataset} test (split seed {seed}) {k}", v] for k, v in metrics.items()]
    model.save_pretrained(out)
    scatter_plot(pred, [r["mos"] for r in test], out / "scatter_test.png")
    return {"split_seed": seed, "best_val_srcc": result["best_srcc"], "steps": result["steps"], "test": metrics,
            "saved": str(out)}


def _cmd_eval(args) -> int:
    from .evaluation import evaluate_model, results_table, scatter_plot
    from .modeling import HyperAlignModel

    records = _records(args)
    if not args.all:
        _, te = _split(args, records)
        records = [records[i] for i in te]
    model = HyperAlignModel.from_pretrained(args.model).to(_device(args.device))
    metrics, pred = evaluate_model(model, records, batch_size=args.batch_size)
    name = args.dataset + ("" if args.all else f" test (split seed {args.split_seed})")
    print(results_table({name: metrics}))
    if args.plot:
        scatter_plot(pred, [r["mos"] for r in records], args.plot)
    return 0
