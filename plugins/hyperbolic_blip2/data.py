"""Random Text Pruning, the training collator and a COCO-Karpathy caption reader.

Random Text Pruning (RTP, Mandica et al. 2024): during training, remove a random span of 0..7 consecutive tokens
from each caption. Here: span length L uniform in {0..max_span}, start uniform over the content tokens, special
tokens ([CLS]/[SEP]/[PAD]) are never removed and at least one content token is always kept.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from ..data import CLIP_MEAN, CLIP_STD


def content_mask(input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 special_token_ids: Optional[Sequence[int]] = None) -> torch.Tensor:
    """Boolean mask of content (non-special, attended) tokens.

    Args:
        input_ids: ``(batch, seq)`` token ids.
        attention_mask: ``(batch, seq)`` 1 for real tokens, 0 for padding.
        special_token_ids: ids that are never content. ``None`` uses the BERT layout rule: the first and the last
            attended token of each row ([CLS] ... [SEP]) are special.

    Returns:
        ``(batch, seq)`` bool.
    """
    attended = attention_mask.bool()
    if special_token_ids is not None:
        special = torch.zeros_like(attended)
        for sid in special_token_ids:
            special |= input_ids == int(sid)
        return attended & ~special
    pos = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
    big = input_ids.shape[1]
    first = torch.where(attended, pos, big).min(dim=1, keepdim=True).values
    last = torch.where(attended, pos, -1).max(dim=1, keepdim=True).values
    return attended & (pos != first) & (pos != last)


def check_captions(input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   special_token_ids: Optional[Sequence[int]] = None) -> None:
    """Raise ``ValueError`` naming ``input_ids`` if a caption has no content token (all special/padding)."""
    counts = content_mask(input_ids, attention_mask, special_token_ids).sum(dim=1)
    empty = (counts == 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"input_ids: expected every caption to have at least one non-special token, got rows "
                         f"{empty[:8]} made only of special tokens/padding")


def random_text_pruning(input_ids: torch.Tensor, attention_mask: torch.Tensor, max_span: int = 7,
                        generator: Optional[torch.Generator] = None, *,
                        special_token_ids: Optional[Sequence[int]] = None,
                        pad_token_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Remove a random span of consecutive content tokens from every caption and re-pad (RTP).

    Per row: ``L ~ U{0..max_span}`` capped at ``n - 1`` (``n`` content tokens, so one is always kept), start
    ``s ~ U{0..n-L}`` in content-token order; the tokens are removed, the rest shifts left and the row is padded
    with ``pad_token_id`` (attention 0) to the original length. Special tokens are never removed.

    Args:
        input_ids: ``(batch, seq)`` token ids.
        attention_mask: ``(batch, seq)`` 0/1 mask.
        max_span: largest span (paper: 7); 0 returns copies of the inputs.
        generator: CPU ``torch.Generator`` for reproducible draws (two draws per row: length, start).
        special_token_ids: see :func:`content_mask`.
        pad_token_id: id written into the freed positions.

    Returns:
        ``(input_ids, attention_mask)`` with the input shapes and dtypes.
    """
    if input_ids.dim() != 2 or attention_mask.shape != input_ids.shape:
        raise ValueError(f"input_ids/attention_mask: expected two (batch, seq) tensors of the same shape, got "
                         f"{tuple(input_ids.shape)} and {tuple(attention_mask.shape)}")
    if not isinstance(max_span, int) or max_span < 0:
        raise ValueError(f"max_span: expected an int >= 0, got {max_span!r}")
    check_captions(input_ids, attention_mask, special_token_ids)
    if max_span == 0:
        return input_ids.clone(), attention_mask.clone()
    content = content_mask(input_ids, attention_mask, special_token_ids).cpu()
    keep = attention_mask.bool().cpu().clone()
    for row in range(input_ids.shape[0]):
        positions = content[row].nonzero().flatten()
        n = positions.numel()
        length = int(torch.randint(0, max_span + 1, (1,), generator=generator))
        length = min(length, n - 1)  # keep >= 1 content token
        start = int(torch.randint(0, n - length + 1, (1,), generator=generator))
        keep[row, positions[start:start + length]] = False
    keep = keep.to(input_ids.device)
    out_ids = torch.full_like(input_ids, pad_token_id)
    out_mask = torch.zeros_like(attention_mask)
    for row in range(input_ids.shape[0]):
        kept = input_ids[row][keep[row]]
        out_ids[row, : kept.numel()] = kept
        out_mask[row, : kept.numel()] = 1
    return out_ids, out_mask


# -- COCO-Karpathy captions --------------------------------------------------------------------------------
@dataclass
class CaptionedImage:
    """One image with its captions (``image_path`` absolute or relative to the image root)."""

    image_path: str
    captions: list[str]
    image_id: str = ""


def read_coco_karpathy(json_path: str | os.PathLike, image_root: str | os.PathLike = "",
                       split: Optional[str] = None) -> list[CaptionedImage]:
    """Read COCO-Karpathy-style caption annotations.

    Two layouts are accepted:

    * LAVIS / BLIP (``coco_karpathy_{train,val,test}.json``): a list of ``{"image": path, "caption": str or
      [str, ...], "image_id": ...}``; rows of the same image are merged.
    * Karpathy's ``dataset_coco.json``: ``{"images": [{"filepath", "filename", "split", "sentences":
      [{"raw": str}, ...]}, ...]}``; ``split`` selects ``"train"``/``"val"``/``"test"`` (``"restval"`` counts
      as train).

    Returns:
        Images in file order, each with its captions and the image path joined with ``image_root``.
    """
    with open(json_path, encoding="utf-8") as f:
        data = json.load(f)
    root = Path(image_root) if image_root else None
    out: dict[str, CaptionedImage] = {}
    if isinstance(data, dict) and "images" in data:
        for img in data["images"]:
            s = img.get("split")
            if split is not None and not (s == split or (split == "train" and s == "restval")):
                continue
            rel = os.path.join(img.get("filepath", ""), img["filename"])
            caps = [s["raw"].strip() for s in img.get("sentences", [])]
            out.setdefault(rel, CaptionedImage(str(root / rel) if root else rel, [], str(img.get("cocoid", rel))))
            out[rel].captions.extend(caps)
    elif isinstance(data, list):
        for row in data:
            if "image" not in row or "caption" not in row:
                raise ValueError(f"json_path: expected rows with 'image' and 'caption', got keys {sorted(row)}")
            rel = row["image"]
            caps = row["caption"] if isinstance(row["caption"], list) else [row["caption"]]
            item = out.setdefault(rel, CaptionedImage(str(root / rel) if root else rel, [],
                                                      str(row.get("image_id", rel))))
            item.captions.extend(c.strip() for c in caps)
    else:
        raise ValueError(f"json_path: expected a list of caption rows or a dict with 'images', got "
                         f"{type(data).__name__}")
    return list(out.values())


class CaptionPairDataset(torch.utils.data.Dataset):
    """Flattened (image, caption) pairs for ITC/ITM training; images are opened lazily as RGB PIL images."""

    def __init__(self, items: Sequence[CaptionedImage]):
        self.pairs = [(it.image_path, cap) for it in items for cap in it.captions]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, idx: int) -> dict:
        from PIL import Image

        path, caption = self.pairs[idx]
        with Image.open(path) as im:
            image = im.convert("RGB")
        return {"image": image, "caption": caption}


@dataclass
class HyperbolicBlip2Collator:
    """Batch ``[{"image": PIL or (3,H,W) tensor, "caption": str}, ...]`` for the model.

    Args:
        tokenizer: a BERT-style tokenizer (``[CLS] ... [SEP]``).
        image_size: images are resized to ``image_size`` x ``image_size`` (bicubic), then normalised.
        mean / std: normalisation (BLIP-2 uses the CLIP mean/std; the shapes-world demo uses 0.5).
        max_length: tokenizer truncation length.
        rtp_max_span: RTP in the collator (0 = off; the model applies RTP itself in training mode).
        return_loss: add ``return_loss=True`` so ``Trainer`` gets a loss.

    Returns (``__call__``): ``{"pixel_values": (B,3,S,S) float32, "input_ids": (B,L), "attention_mask": (B,L),
    "return_loss": bool}``.
    """

    tokenizer: Any
    image_size: int = 224
    mean: Sequence[float] = CLIP_MEAN
    std: Sequence[float] = CLIP_STD
    max_length: int = 32
    rtp_max_span: int = 0
    return_loss: bool = True
    generator: Optional[torch.Generator] = field(default=None, repr=False)

    def images(self, images: Sequence[Any]) -> torch.Tensor:
        """Resize + normalise PIL images (tensors ``(3,S,S)`` are stacked as given)."""
        from PIL import Image

        from ..data import images_to_tensor

        if all(isinstance(im, torch.Tensor) for im in images):
            return torch.stack(list(images)).float()
        resized = [im.convert("RGB").resize((self.image_size, self.image_size), Image.BICUBIC)
                   if im.size != (self.image_size, self.image_size) else im.convert("RGB") for im in images]
        return images_to_tensor(resized, self.mean, self.std)

    def __call__(self, features: Sequence[dict]) -> dict:
        pixel_values = self.images([f["image"] for f in features])
        tok = self.tokenizer([f["caption"] for f in features], padding="longest", truncation=True,
                             max_length=self.max_length, return_tensors="pt")
        input_ids, attention_mask = tok["input_ids"], tok["attention_mask"]
        if self.rtp_max_span > 0:
            input_ids, attention_mask = random_text_pruning(input_ids, attention_mask, self.rtp_max_span,
                                                            self.generator,
                                                            pad_token_id=self.tokenizer.pad_token_id or 0)
        batch = {"pixel_values": pixel_values, "input_ids": input_ids, "attention_mask": attention_mask}
        if self.return_loss:
            batch["return_loss"] = True
        return batch
