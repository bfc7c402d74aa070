"""JSON presets in ``hub_configs/``: tiny test models and the real checkpoints' architectures.

A preset file looks like::

    {"name": "tiny-clip", "hub_id": null, "library": "transformers",
     "config_class": "CLIPConfig", "model_class": "CLIPModel", "config": {...}}

``library`` is ``"transformers"`` (the config dict is passed to ``transformers.<config_class>``) or
``"open_clip"`` (the dict is an open_clip model config passed to ``open_clip.CLIP``). Presets of real
checkpoints carry their Hub id and were written from the published ``config.json`` values, so GPU
benchmarks can build full-size models offline with random weights. Presets may also carry plugin
settings (e.g. contrastive-attention layers) under ``"plugin"``.
"""

from __future__ import annotations

import copy
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional

import torch

_ENV = "VLPLUGINS_HUB_CONFIGS"


def presets_dir() -> Path:
    """Directory holding the preset JSON files (``$VLPLUGINS_HUB_CONFIGS`` overrides it)."""
    if os.environ.get(_ENV):
        return Path(os.environ[_ENV])
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "hub_configs", here.parent.parent / "hub_configs"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"hub_configs/ not found next to {here.parent}; set ${_ENV}")


def list_presets() -> list[str]:
    """Names of all presets (file stems in :func:`presets_dir`)."""
    return sorted(p.stem for p in presets_dir().glob("*.json"))


@lru_cache(maxsize=None)
def _read(name: str) -> dict:
    path = presets_dir() / f"{name}.json"
    if not path.is_file():
        raise ValueError(f"name: unknown preset {name!r}; expected one of {list_presets()}")
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if data.get("name") != name:
        raise ValueError(f"preset file {path} declares name {data.get('name')!r}, expected {name!r}")
    return data


def preset_info(name: str) -> dict:
    """The raw preset dict (a deep copy): ``name``, ``hub_id``, ``library``, classes, ``config``, ``plugin``."""
    return copy.deepcopy(_read(name))


def load_preset(name: str):
    """Config object of a preset: a transformers ``PreTrainedConfig`` or an open_clip config dict."""
    data = _read(name)
    if data["library"] == "open_clip":
        return copy.deepcopy(data["config"])
    import transformers

    config_cls = getattr(transformers, data["config_class"])
    return config_cls(**copy.deepcopy(data["config"]))


def build_from_preset(name: str, dtype: Optional[torch.dtype] = None, seed: Optional[int] = 0,
                      device: Any = None, **overrides):
    """Build a randomly initialised model from a preset (no download).

    Args:
        name: preset name, e.g. ``"tiny-llava"`` or ``"llava-1.5-7b"``.
        dtype: parameter dtype (e.g. ``torch.bfloat16``); default float32.
        seed: seed for the random init (``None`` leaves the global RNG alone); the global RNG state is
            restored afterwards, so building a model does not perturb the caller's randomness.
        device: device to build on (e.g. ``"cuda"``; ``"meta"`` for shape-only use).
        **overrides: transformers config attributes to override (e.g. ``attn_implementation="eager"``).

    Returns:
        The model in eval mode: a transformers ``PreTrainedModel`` or an ``open_clip.CLIP``.
    """
    data = _read(name)
    devices = [torch.device(device)] if device is not None and torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices, enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        ctx = torch.device(device) if device is not None else torch.device("cpu")
        with ctx:
            if data["library"] == "open_clip":
                import open_clip

                cfg = copy.deepcopy(data["config"])
                model = open_clip.CLIP(**cfg)
            else:
                import transformers

                config = load_preset(name)
                attn = overrides.pop("attn_implementation", None)
                for key, value in overrides.items():
                    setattr(config, key, value)
                model_cls = getattr(transformers, data["model_class"])
                kwargs = {"attn_implementation": attn} if attn else {}
                model = model_cls._from_config(config, **kwargs)
    if dtype is not None:
        model = model.to(dtype)
    return model.eval()
