"""Attach the hyperbolic head to an existing transformers ``Blip2ForImageTextRetrieval`` with forward hooks.

Three hooks, removed together by :meth:`HyperbolicHeadHandle.remove` (after which the model's outputs are
bit-identical to before attaching, since nothing of the model is modified):

* on ``vision_projection`` and ``text_projection``: record the unnormalised projection outputs e_j and u;
* on the model: after an ITC forward (``use_image_text_matching_head=False``, ``return_dict`` output), replace
  ``image_embeds`` / ``text_embeds`` by the ball points, ``logits_per_image`` / ``logits_per_text`` by the head's
  max-over-queries similarity (cosine: equal to the original values up to rounding; ``poincare_distance``:
  minus the geodesic distance), and add ``image_radius (B, Q)``, ``text_radius (B,)`` and ``query_index``.

The logits keep transformers' convention (no temperature). ITM forwards and tuple outputs pass through unchanged.
"""

from __future__ import annotations

from typing import Optional

import torch
from transformers import Blip2ForImageTextRetrieval

from .configuration import HyperbolicBlip2Config
from .head import HyperbolicITCHead


class HyperbolicHeadHandle:
    """What :func:`attach_hyperbolic_head` returns.

    Attributes:
        head: the :class:`HyperbolicITCHead` (not registered in the model; train it with ``handle.head.parameters()``).
        model: the model the hooks are on.
    """

    def __init__(self, model: Blip2ForImageTextRetrieval, head: HyperbolicITCHead):
        self.model = model
        self.head = head
        self._features: dict[str, torch.Tensor] = {}
        self._hooks = [
            model.vision_projection.register_forward_hook(self._record("image")),
            model.text_projection.register_forward_hook(self._record("text")),
            model.register_forward_hook(self._rewrite, with_kwargs=True),
        ]

    def _record(self, key: str):
        def hook(module, args, output):
            self._features[key] = output

        return hook

    def _rewrite(self, module, args, kwargs, output):
        feats, self._features = self._features, {}
        if "image" not in feats or "text" not in feats or not hasattr(output, "keys"):
            return output
        img = self.head.embed(feats["image"], "image")
        txt = self.head.embed(feats["text"], "text")
        sim, index = self.head.best_query(self.head.query_text_similarity(img.points, txt.points))
        output["logits_per_image"] = sim.to(output.logits_per_image.dtype)
        output["logits_per_text"] = output["logits_per_image"].t()
        output["image_embeds"] = img.points
        output["text_embeds"] = txt.points
        output["image_radius"] = img.radius
        output["text_radius"] = txt.radius
        output["query_index"] = index
        return output

    @property
    def attached(self) -> bool:
        """Whether the hooks are still registered."""
        return bool(self._hooks)

    def remove(self) -> None:
        """Remove all hooks; the model behaves exactly as before :func:`attach_hyperbolic_head`. Idempotent."""
        for h in self._hooks:
            h.remove()
        self._hooks = []
        self._features = {}


def attach_hyperbolic_head(model: Blip2ForImageTextRetrieval, config: Optional[HyperbolicBlip2Config] = None,
                           head: Optional[HyperbolicITCHead] = None, **config_kwargs) -> HyperbolicHeadHandle:
    """Hook a hyperbolic ITC head onto ``model``'s projection outputs.

    Args:
        model: a transformers ``Blip2ForImageTextRetrieval``.
        config: head settings (curvature, scale, loss type); built from ``config_kwargs`` and the model's
            ``image_text_hidden_size`` when ``None``.
        head: an existing (e.g. trained) head to use instead of a fresh one.

    Returns:
        :class:`HyperbolicHeadHandle`; call ``.remove()`` to detach.
    """
    if not isinstance(model, Blip2ForImageTextRetrieval):
        raise ValueError(f"model: expected a transformers Blip2ForImageTextRetrieval, got {type(model).__name__}")
    if config is None:
        config = HyperbolicBlip2Config(base_model_name_or_path=getattr(model.config, "_name_or_path", None) or
                                       "unknown", embed_dim=model.config.image_text_hidden_size,
                                       num_query_tokens=model.config.num_query_tokens, **config_kwargs)
    if head is None:
        head = HyperbolicITCHead(config)
    ref = model.vision_projection.weight
    head = head.to(device=ref.device)
    return HyperbolicHeadHandle(model, head)
