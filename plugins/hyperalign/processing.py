"""Input handling for :meth:`HyperAlignModel.score`: images (PIL / numpy / tensors / file paths) and prompts.

Every check raises ``ValueError`` naming the offending item (``images[3]``, ``prompts[0]``), because a reward
function called from an RL loop on thousands of samples must say *which* sample was bad.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F


def check_prompts(prompts: Any) -> list[str]:
    """Validate prompts: a sequence of non-empty strings (a single ``str`` is refused, it is almost always a bug).

    Returns:
        The prompts as a list.
    """
    if isinstance(prompts, str) or not isinstance(prompts, Sequence):
        raise ValueError(f"prompts: expected a sequence of strings, got {type(prompts).__name__}")
    out = []
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise ValueError(f"prompts[{i}]: expected a string, got {type(p).__name__}")
        if not p.strip():
            raise ValueError(f"prompts[{i}]: expected a non-empty prompt, got {p!r}")
        out.append(p)
    return out


def split_images(images: Any):
    """Turn ``images`` into something indexable by item: a list of single images, or a batched ``(N, 3, H, W)``
    tensor kept as one tensor (so it is validated and resized batch-wise on its own device, without one host sync
    per image).

    Accepts a list/tuple of images, a batched tensor ``(N, 3, H, W)`` or array ``(N, H, W, 3)``, or one image.
    """
    if isinstance(images, torch.Tensor):
        if images.dim() == 4:
            if images.shape[1] not in (1, 3):
                raise ValueError(f"images: expected a (N, 3, H, W) tensor, got shape {tuple(images.shape)}")
            return images
        if images.dim() == 3:
            return [images]
        raise ValueError(f"images: expected a (N, 3, H, W) or (3, H, W) tensor, got shape {tuple(images.shape)}")
    if isinstance(images, np.ndarray):
        if images.ndim == 4:
            return list(images)
        if images.ndim in (2, 3):
            return [images]
        raise ValueError(f"images: expected a (N, H, W, 3) or (H, W, 3) array, got shape {images.shape}")
    if isinstance(images, (list, tuple)):
        return list(images)
    return [images]


def _to_chw_float(image: Any, index: int) -> torch.Tensor:
    """One image -> ``(3, H, W)`` float tensor in ``[0, 1]`` (on the image's own device for tensors)."""
    from PIL import Image, UnidentifiedImageError

    name = f"images[{index}]"
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        try:
            with Image.open(path) as im:
                im.load()
                image = im.convert("RGB")
        except (OSError, UnidentifiedImageError, ValueError) as err:
            raise ValueError(f"{name}: cannot read image file {str(path)!r} ({type(err).__name__}: {err})") from None
    if isinstance(image, Image.Image):
        arr = np.asarray(image.convert("RGB"), dtype=np.uint8)
        return torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255.0
    if isinstance(image, np.ndarray):
        arr = image
        if arr.ndim == 2:
            arr = np.repeat(arr[:, :, None], 3, axis=2)
        if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
            raise ValueError(f"{name}: expected an (H, W, 3) array, got shape {arr.shape}")
        arr = arr[:, :, :3] if arr.shape[2] != 1 else np.repeat(arr, 3, axis=2)
        t = torch.from_numpy(np.array(arr, copy=True)).permute(2, 0, 1)  # copy: inputs may be read-only views
        image = t
        is_hwc = True
    else:
        is_hwc = False
    if isinstance(image, torch.Tensor):
        t = image
        if not is_hwc and (t.dim() != 3 or t.shape[0] not in (1, 3)):
            raise ValueError(f"{name}: expected a (3, H, W) tensor, got shape {tuple(t.shape)}")
        if t.shape[0] == 1:
            t = t.expand(3, -1, -1)
        if t.dtype == torch.uint8:
            return t.float() / 255.0
        if not t.dtype.is_floating_point:
            raise ValueError(f"{name}: expected uint8 or float pixels, got dtype {t.dtype}")
        return t.float()
    raise ValueError(f"{name}: expected a PIL image, numpy array, tensor or file path, got {type(image).__name__}")


def resize_center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """CLIP's geometry: resize the shorter side to ``size`` (bicubic, antialiased) then center-crop ``size``.

    Args:
        x: ``(3, H, W)`` float image.
        size: output side.

    Returns:
        ``(3, size, size)``.
    """
    h, w = x.shape[-2:]
    if (h, w) == (size, size):
        return x
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    x = F.interpolate(x[None], size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)[0]
    top, left = (nh - size) // 2, (nw - size) // 2
    return x[:, top:top + size, left:left + size].clamp(0.0, 1.0)


def preprocess_images(images: Sequence[Any], size: int, mean: Sequence[float], std: Sequence[float],
                      device: torch.device, offset: int = 0) -> torch.Tensor:
    """Images -> normalised pixel batch ``(N, 3, size, size)`` float32 on ``device``.

    Floats are taken as ``[0, 1]`` pixels (diffusion pipelines' ``output_type="pt"``), uint8 as ``[0, 255]``.

    Args:
        images: list of PIL images, ``(H, W, 3)`` arrays, ``(3, H, W)`` tensors or image file paths.
        size: the vision tower's input resolution.
        mean: per-channel mean.
        std: per-channel std.
        device: target device.
        offset: index of ``images[0]`` in the caller's full list (for error messages).

    Raises:
        ValueError: unreadable file, unsupported type or shape, or non-finite pixels, naming ``images[i]``.
    """
    if isinstance(images, torch.Tensor) and images.dim() == 4:
        return _preprocess_batch(images, size, mean, std, device, offset)
    out = []
    for j, image in enumerate(images):
        t = _to_chw_float(image, offset + j).to(device)
        if not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise ValueError(f"images[{offset + j}]: expected finite pixel values, got {bad} NaN/inf value(s)")
        out.append(resize_center_crop(t, size))
    x = torch.stack(out)
    m = torch.tensor(mean, dtype=x.dtype, device=device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=device).view(1, 3, 1, 1)
    return (x - m) / s


def _preprocess_batch(images: torch.Tensor, size: int, mean: Sequence[float], std: Sequence[float],
                      device: torch.device, offset: int) -> torch.Tensor:
    """Batched path of :func:`preprocess_images` for a ``(N, C, H, W)`` tensor (one finiteness check per batch)."""
    x = images.to(device)
    if x.dtype == torch.uint8:
        x = x.float() / 255.0
    elif not x.dtype.is_floating_point:
        raise ValueError(f"images: expected uint8 or float pixels, got dtype {x.dtype}")
    x = x.float()
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    finite = torch.isfinite(x).flatten(1).all(1)
    if not bool(finite.all()):
        j = int((~finite).nonzero()[0])
        bad = int((~torch.isfinite(x[j])).sum())
        raise ValueError(f"images[{offset + j}]: expected finite pixel values, got {bad} NaN/inf value(s)")
    if x.shape[-2:] != (size, size):
        h, w = x.shape[-2:]
        scale = size / min(h, w)
        nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
        x = F.interpolate(x, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)
        top, left = (nh - size) // 2, (nw - size) // 2
        x = x[:, :, top:top + size, left:left + size].clamp(0.0, 1.0)
    m = torch.tensor(mean, dtype=x.dtype, device=device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=device).view(1, 3, 1, 1)
    return (x - m) / s


def tokenize(prompts: Sequence[str], max_length: int, pad_to_max: bool = False) -> dict[str, torch.Tensor]:
    """CLIP BPE tokenisation (offline tokenizer from :func:`vlplugins.hub.tokenizers.clip_tokenizer`).

    Args:
        prompts: ``N`` strings.
        max_length: context length (77); longer prompts are truncated keeping ``<|endoftext|>`` last.
        pad_to_max: pad to ``max_length`` with id 0 (open_clip's convention) instead of to the longest prompt.

    Returns:
        ``input_ids`` and ``attention_mask``, both ``(N, L)`` int64.
    """
    from ..hub.tokenizers import clip_tokenizer

    tok = clip_tokenizer()
    enc = tok(list(prompts), padding="max_length" if pad_to_max else "longest", max_length=max_length,
              truncation=True, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    if pad_to_max:
        ids = ids.masked_fill(mask == 0, 0)
    return {"input_ids": ids, "attention_mask": mask}


def logit(p: float) -> float:
    """``log(p / (1 - p))``."""
    return math.log(p / (1.0 - p))
