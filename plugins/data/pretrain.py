"""Brief, deterministic pretraining of tiny backbones on the shapes world, cached as safetensors.

A frozen *random* backbone sees nothing, so a plugin head trained on top of it proves little. The learning
checks and demos therefore start from a tiny CLIP (preset ``tiny-clip``) trained contrastively on shapes-world
image/caption pairs for a few hundred steps. Training is deterministic (fixed seeds, fixed data), takes a few
seconds on 2 CPU cores, and its weights are cached under ``$VLPLUGINS_CACHE`` (default
``~/.cache/vlplugins``), keyed by a hash of everything that determines them.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from .shapes import CLIP_MEAN, CLIP_STD, ShapesWorld, images_to_tensor

# Bump when the recipe below changes so stale caches are not reused.
_RECIPE_VERSION = 2  # 2: training pinned to one intra-op thread


def cache_dir() -> Path:
    """Directory for cached fixtures (``$VLPLUGINS_CACHE`` or ``~/.cache/vlplugins``)."""
    return Path(os.environ.get("VLPLUGINS_CACHE", Path.home() / ".cache" / "vlplugins"))


def shapes_clip_batch(world: ShapesWorld, start: int, count: int, levels=(2, 3, 4)):
    """Images and captions for CLIP-style training: scene ``i`` with caption level ``levels[i % len(levels)]``.

    Returns:
        ``pixel_values``: ``(count, 3, S, S)`` normalised with CLIP's mean/std, and a list of ``count`` captions.
    """
    images, captions = [], []
    from .shapes import render

    for i in range(start, start + count):
        scene = world.scene(i, num_objects=2)
        images.append(render(scene))
        captions.append(world.caption(scene, levels[i % len(levels)]))
    return images_to_tensor(images, CLIP_MEAN, CLIP_STD), captions


def pretrained_tiny_clip(seed: int = 0, steps: int = 400, batch_size: int = 64, num_scenes: int = 2048,
                         use_cache: bool = True):
    """Tiny transformers ``CLIPModel`` (preset ``tiny-clip``) trained on shapes-world captions.

    Args:
        seed: seed for the initialisation, data order and data generation.
        steps: optimisation steps of symmetric InfoNCE (AdamW, lr 1e-3, cosine decay).
        batch_size: image-caption pairs per step.
        num_scenes: size of the fixed training pool.
        use_cache: read/write the cached weights.

    Returns:
        The trained ``CLIPModel`` in eval mode with ``requires_grad=False`` everywhere (callers unfreeze what they
        train). Its tokenizer is :func:`vlplugins.hub.tokenizers.clip_tokenizer`; its images are 32 px normalised with
        :data:`CLIP_MEAN` / :data:`CLIP_STD`.
    """
    from safetensors.torch import load_file

    from ..hub.checkpoint import save_safetensors
    from ..hub.presets import build_from_preset, preset_info
    from ..hub.tokenizers import clip_tokenizer

    image_size = preset_info("tiny-clip")["config"]["vision_config"]["image_size"]
    key = json.dumps([_RECIPE_VERSION, preset_info("tiny-clip"), seed, steps, batch_size, num_scenes], sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    path = cache_dir() / f"tiny-clip-shapes-{digest}.safetensors"

    model = build_from_preset("tiny-clip", seed=seed)
    if use_cache and path.is_file():
        model.load_state_dict(load_file(str(path)))
    else:
        world = ShapesWorld(image_size=image_size, seed=seed)
        pixels, captions = shapes_clip_batch(world, 0, num_scenes)
        tok = clip_tokenizer()
        enc = tok(captions, padding="max_length", max_length=16, truncation=True, return_tensors="pt")
        ids, mask = enc["input_ids"], enc["attention_mask"]
        # Captions repeat across scenes (few attribute combinations): every pair with the same caption is a
        # positive, otherwise identical captions would be pushed apart as false negatives. Caption ids are computed
        # once so each step compares integers instead of strings.
        caption_id = {c: i for i, c in enumerate(dict.fromkeys(captions))}
        cap = torch.tensor([caption_id[c] for c in captions])
        # Train on one intra-op thread: the reduction order (and so the last bits of the weights) depends on the
        # thread count, and the cache key must describe the weights completely.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            gen = torch.Generator().manual_seed(seed)
            model.train()
            opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
            for _ in range(steps):
                idx = torch.randperm(num_scenes, generator=gen)[:batch_size]
                out = model(input_ids=ids[idx], attention_mask=mask[idx], pixel_values=pixels[idx])
                same = (cap[idx][:, None] == cap[idx][None, :]).to(torch.float32)
                target = same / same.sum(-1, keepdim=True)
                logits = out.logits_per_image
                loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target.t())) / 2
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
        finally:
            torch.set_num_threads(threads)
        model.eval()
        if use_cache:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            save_safetensors(model.state_dict(), tmp)
            os.replace(tmp, path)  # atomic: concurrent test workers never read a half-written file
    model.requires_grad_(False)
    return model.eval()


def clip_retrieval_accuracy(model, world: ShapesWorld, start: int = 100_000, count: int = 256,
                            level: int = 3) -> float:
    """Image->text top-1 accuracy of ``model`` on ``count`` held-out scenes, counting any caption-identical
    candidate as correct (used to check that pretraining learned something)."""
    from ..hub.tokenizers import clip_tokenizer

    pixels, captions = shapes_clip_batch(world, start, count, levels=(level,))
    enc = clip_tokenizer()(captions, padding="max_length", max_length=16, truncation=True, return_tensors="pt")
    with torch.no_grad():
        out = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], pixel_values=pixels)
    pred = out.logits_per_image.argmax(-1).tolist()
    return sum(captions[p] == captions[i] for i, p in enumerate(pred)) / count
