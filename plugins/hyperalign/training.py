"""Training HyperAlign with transformers' ``Trainer`` (accelerate underneath).

* AdamW with separate parameter groups: adapter and regressor weights (``lr``, ``weight_decay``) and the scalars
  — feature-scale logits ``alpha_0``, adapter gates, log-curvature — (``scalar_lr``, no weight decay), the paper's
  "different learning rates and weight decays" (values are our defaults, the paper's are not published).
* Early stopping on validation SRCC (:class:`SRCCEarlyStopping`), restoring the best head at the end.
* The backbone is frozen, so by default the CLIP embeddings of every record are computed once
  (:func:`encode_records`) and the head trains on them: the same numbers as running the towers every step.
"""

from __future__ import annotations

import math
import tempfile
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset
from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

from .data import normalise_mos
from .evaluation import correlation_metrics
from .processing import preprocess_images, tokenize

SCALAR_NAMES = ("alpha0_image", "alpha0_text", "log_curv", "gate")


class RecordDataset(Dataset):
    """Raw records -> ``{"image", "prompt", "labels"}`` with labels = MOS normalised to ``[0, 1]``.

    Args:
        records: dicts with ``image`` (PIL / path / array / tensor), ``prompt`` and ``mos``.
        mos_range: ``(lo, hi)`` used for normalisation (default: the records' own min/max).
    """

    def __init__(self, records: Sequence[dict], mos_range: Optional[tuple[float, float]] = None):
        self.records = list(records)
        lo, hi = mos_range if mos_range is not None else (None, None)
        self.labels = normalise_mos([r["mos"] for r in self.records], lo, hi).astype(np.float32)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict:
        r = self.records[i]
        return {"image": r["image"], "prompt": r["prompt"], "labels": float(self.labels[i])}


class EmbeddingDataset(Dataset):
    """Precomputed CLIP embeddings ``image_embeds`` (N, D), ``text_embeds`` (N, D) and labels (N,)."""

    def __init__(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor, labels: Sequence[float]):
        if not (len(image_embeds) == len(text_embeds) == len(labels)):
            raise ValueError(f"image_embeds/text_embeds/labels: expected equal lengths, got {len(image_embeds)}, "
                             f"{len(text_embeds)}, {len(labels)}")
        self.image_embeds, self.text_embeds = image_embeds, text_embeds
        self.labels = torch.as_tensor(np.asarray(labels, dtype=np.float32))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"image_embeds": self.image_embeds[i], "text_embeds": self.text_embeds[i], "labels": self.labels[i]}


class HyperAlignCollator:
    """Batches either precomputed embeddings or raw images + prompts (preprocessed and tokenised on the CPU).

    Args:
        model: the :class:`HyperAlignModel` (for the image size, normalisation and context length).
    """

    def __init__(self, model):
        cfg = model.config
        self.size, self.mean, self.std = cfg.image_size, cfg.image_mean, cfg.image_std
        self.context_length = model._context_length()
        self.pad_to_max = cfg.backbone == "open_clip"

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        labels = torch.tensor([float(it["labels"]) for it in items], dtype=torch.float32)
        if "image_embeds" in items[0]:
            return {"image_embeds": torch.stack([it["image_embeds"] for it in items]),
                    "text_embeds": torch.stack([it["text_embeds"] for it in items]), "labels": labels}
        pixel_values = preprocess_images([it["image"] for it in items], self.size, self.mean, self.std,
                                         torch.device("cpu"))
        text = tokenize([it["prompt"] for it in items], self.context_length, pad_to_max=self.pad_to_max)
        return {"pixel_values": pixel_values, **text, "labels": labels}


@torch.no_grad()
def encode_records(model, records: Sequence[dict], batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen-backbone CLIP embeddings of records -> ``(image_embeds (N, D), text_embeds (N, D))`` float32 CPU.

    Prompts shared by several images are encoded once.
    """
    model.eval()
    coll = HyperAlignCollator(model)
    imgs = []
    for s in range(0, len(records), batch_size):
        chunk = records[s:s + batch_size]
        px = preprocess_images([r["image"] for r in chunk], coll.size, coll.mean, coll.std, model.device, offset=s)
        imgs.append(model.encode_image(px).float().cpu())
    prompts = sorted({r["prompt"] for r in records})
    index = {p: i for i, p in enumerate(prompts)}
    txt = []
    for s in range(0, len(prompts), batch_size):
        enc = tokenize(prompts[s:s + batch_size], coll.context_length, pad_to_max=coll.pad_to_max)
        txt.append(model.encode_text(enc["input_ids"].to(model.device), enc["attention_mask"].to(model.device))
                   .float().cpu())
    text_table = torch.cat(txt)
    return torch.cat(imgs), text_table[torch.tensor([index[r["prompt"]] for r in records])]


def parameter_groups(model: torch.nn.Module, lr: float = 1e-4, weight_decay: float = 1e-4, scalar_lr: float = 1e-3,
                     scalar_weight_decay: float = 0.0) -> list[dict]:
    """AdamW parameter groups over the trainable parameters: scalars (``alpha0_*``, ``log_curv``, adapter gates)
    vs everything else (adapter and regressor weights, or a baseline's head)."""
    scalars, weights = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (scalars if p.dim() == 0 or name.split(".")[-1] in SCALAR_NAMES else weights).append(p)
    groups = [{"params": weights, "lr": lr, "weight_decay": weight_decay}]
    if scalars:
        groups.append({"params": scalars, "lr": scalar_lr, "weight_decay": scalar_weight_decay})
    return groups


def build_optimizer(model: torch.nn.Module, **kwargs) -> torch.optim.AdamW:
    """``torch.optim.AdamW`` over :func:`parameter_groups` (same keyword arguments)."""
    return torch.optim.AdamW(parameter_groups(model, **kwargs))


def compute_metrics(eval_pred) -> dict[str, float]:
    """``Trainer`` metrics hook: SRCC/KRCC/PLCC of the scores against the normalised labels."""
    pred = eval_pred.predictions
    pred = pred[0] if isinstance(pred, (tuple, list)) else pred
    return correlation_metrics(np.asarray(pred).reshape(-1), np.asarray(eval_pred.label_ids).reshape(-1))


class SRCCEarlyStopping(TrainerCallback):
    """Stop when validation SRCC has not improved for ``patience`` evaluations; keep and restore the best
    trainable state (in memory, so no checkpoint files and no pickle).

    Attributes:
        best: best validation SRCC seen (``-inf`` before the first evaluation).
        history: list of every evaluation's metrics.
    """

    def __init__(self, patience: int = 3, metric: str = "eval_srcc", min_delta: float = 0.0):
        self.patience, self.metric, self.min_delta = patience, metric, min_delta
        self.best = -math.inf
        self.bad = 0
        self.best_state: Optional[dict] = None
        self.history: list[dict] = []
        self.model = None

    def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
        """Track the best SRCC; request a stop after ``patience`` evaluations without improvement."""
        metrics = metrics or {}
        self.history.append(dict(metrics))
        value = metrics.get(self.metric)
        if value is None or not np.isfinite(value):
            return
        if self.model is None:
            self.model = model
        if value > self.best + self.min_delta:
            self.best, self.bad = value, 0
            if self.model is not None:
                self.best_state = {k: v.detach().clone() for k, v in _head_state(self.model).items()}
        else:
            self.bad += 1
            if self.bad >= self.patience:
                control.should_training_stop = True

    def on_train_end(self, args, state, control, model=None, **kwargs):
        """Load the best state back into the model."""
        model = self.model if self.model is not None else model
        if self.best_state is not None and model is not None:
            model.load_state_dict(self.best_state, strict=False)


def _head_state(model) -> dict[str, torch.Tensor]:
    return model.head_state_dict() if hasattr(model, "head_state_dict") else model.state_dict()


class _EmbeddingHeadWrapper(torch.nn.Module):
    """Lets a plain head (e.g. :class:`CosineLinearBaseline`) train under ``Trainer`` with the same batches."""

    def __init__(self, head: torch.nn.Module):
        super().__init__()
        self.head = head

    def forward(self, image_embeds, text_embeds, labels=None, **kwargs):
        out = self.head(image_embeds, text_embeds, labels)
        return {"loss": out.loss, "scores": out.scores} if out.loss is not None else {"scores": out.scores}


def train_hyperalign(model, train_records: Sequence[dict], eval_records: Sequence[dict],
                     output_dir: Optional[str] = None, *, epochs: float = 20, batch_size: int = 8, lr: float = 1e-4,
                     weight_decay: float = 1e-4, scalar_lr: float = 1e-3, patience: int = 3, seed: int = 0,
                     mos_range: Optional[tuple[float, float]] = None, precompute: bool = True,
                     eval_steps: Optional[int] = None, embeddings: Optional[dict] = None,
                     head: Optional[torch.nn.Module] = None, verbose: bool = False,
                     **training_kwargs: Any) -> dict:
    """Train the HyperAlign head (or a baseline ``head`` on the same embeddings) with ``Trainer``.

    Args:
        model: :class:`HyperAlignModel` (its frozen backbone provides the embeddings).
        train_records: records with ``image``, ``prompt``, ``mos``.
        eval_records: validation records (early stopping on their SRCC).
        output_dir: Trainer output directory (a temporary one by default; nothing is checkpointed there).
        epochs: maximum epochs (paper: 20).
        batch_size: paper: 8.
        lr: adapters/regressor learning rate.
        weight_decay: adapters/regressor weight decay.
        scalar_lr: learning rate of the scalars (no weight decay).
        patience: evaluations without SRCC improvement before stopping.
        seed: Trainer seed (data order).
        mos_range: ``(lo, hi)`` for MOS normalisation (default: min/max over train + eval records).
        precompute: train on embeddings computed once by the frozen backbone (identical results, much faster).
        eval_steps: evaluate every ``eval_steps`` steps instead of every epoch.
        embeddings: already computed ``{"train": (img, txt), "eval": (img, txt)}`` (skips :func:`encode_records`).
        head: train this module (``forward(image_embeds, text_embeds, labels)``) instead of ``model``'s head.
        verbose: print each evaluation's metrics (Trainer's printer callback).
        **training_kwargs: extra ``TrainingArguments``.

    Returns:
        ``{"best_srcc", "history", "mos_range", "steps"}``; the model (or ``head``) holds the best state.
    """
    if mos_range is None:
        all_mos = [r["mos"] for r in list(train_records) + list(eval_records)]
        mos_range = (float(min(all_mos)), float(max(all_mos)))
    train_ds = RecordDataset(train_records, mos_range)
    eval_ds = RecordDataset(eval_records, mos_range)
    if precompute or head is not None:
        if embeddings is None:
            embeddings = {"train": encode_records(model, train_records), "eval": encode_records(model, eval_records)}
        train_ds = EmbeddingDataset(*embeddings["train"], train_ds.labels)
        eval_ds = EmbeddingDataset(*embeddings["eval"], eval_ds.labels)
    trainee = model if head is None else _EmbeddingHeadWrapper(head)
    optimizer = build_optimizer(trainee, lr=lr, weight_decay=weight_decay, scalar_lr=scalar_lr)
    stopper = SRCCEarlyStopping(patience=patience)
    stopper.model = model if head is None else head
    tmp = None
    if output_dir is None:
        tmp = tempfile.TemporaryDirectory()
        output_dir = tmp.name
    strategy = {"eval_strategy": "steps", "eval_steps": eval_steps} if eval_steps else {"eval_strategy": "epoch"}
    args = TrainingArguments(
        output_dir=output_dir, per_device_train_batch_size=batch_size, per_device_eval_batch_size=max(64, batch_size),
        num_train_epochs=epochs, save_strategy="no", report_to=[], seed=seed, data_seed=seed,
        remove_unused_columns=False, label_names=["labels"], disable_tqdm=True, logging_strategy="no",
        use_cpu=not torch.cuda.is_available(), lr_scheduler_type="constant", **strategy, **training_kwargs)
    # The stopper keeps the best state of what is being trained; the wrapper exposes its head's state.
    trainer = Trainer(model=trainee, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                      data_collator=HyperAlignCollator(model), compute_metrics=compute_metrics,
                      callbacks=[stopper], optimizers=(optimizer, None))
    if not verbose:
        trainer.remove_callback(PrinterCallback)
    try:
        trainer.train()
    finally:
        if tmp is not None:
            tmp.cleanup()
    if stopper.best_state is not None:
        (model if head is None else head).load_state_dict(stopper.best_state, strict=False)
    trainee.eval()
    return {"best_srcc": stopper.best, "history": stopper.history, "mos_range": mos_range,
            "steps": trainer.state.global_step}
