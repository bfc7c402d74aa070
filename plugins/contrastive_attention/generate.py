"""Entry points into ``generate``: a context manager, a logits processor, and a ``custom_generate`` callable.

All three install the same prefill hooks (:class:`~.hooks.ContrastiveAttentionHandle`); the decoding loop itself
is the stock one of transformers (greedy, sampling, beam search), because contrastive attention only changes the
prefill and the KV cache carries its effect.
"""

from __future__ import annotations

import os
import weakref
from typing import Optional, Union

import torch
from transformers import GenerationConfig, GenerationMixin, LogitsProcessor
from transformers.generation.stopping_criteria import StoppingCriteriaList

from .configuration import ContrastiveAttentionConfig
from .hooks import ContrastiveAttentionHandle

ConfigLike = Union[ContrastiveAttentionConfig, dict, str, os.PathLike]


def resolve_config(config: ConfigLike, argument: str = "contrastive_attention") -> ContrastiveAttentionConfig:
    """A :class:`ContrastiveAttentionConfig` from a config, a dict of fields, a directory / Hub id, or a
    ``"preset:<name>"`` string."""
    if isinstance(config, ContrastiveAttentionConfig):
        return config
    if isinstance(config, dict):
        return ContrastiveAttentionConfig(**config)
    if isinstance(config, (str, os.PathLike)):
        text = str(config)
        if text.startswith("preset:"):
            return ContrastiveAttentionConfig.from_preset(text[len("preset:"):])
        return ContrastiveAttentionConfig.from_pretrained(text)
    raise ValueError(f"{argument}: expected a ContrastiveAttentionConfig, a dict, a directory/Hub id or "
                     f"'preset:<name>', got {type(config).__name__}")


def enable_contrastive_attention(model, config: ConfigLike) -> ContrastiveAttentionHandle:
    """Install contrastive attention on ``model``; use as a context manager or call ``.remove()``.

    Args:
        model: ``LlavaForConditionalGeneration`` / ``LlavaNextForConditionalGeneration`` (sdpa or eager attention).
        config: a :class:`ContrastiveAttentionConfig` (or anything :func:`resolve_config` accepts).

    Returns:
        The installed :class:`~.hooks.ContrastiveAttentionHandle`. Every forward whose input contains image tokens
        (the prefill of ``generate``) is modified; ``handle.last`` holds that prefill's i*, IA and scale.

    Example::

        with enable_contrastive_attention(model, cfg):
            out = model.generate(**inputs, max_new_tokens=32)
    """
    return ContrastiveAttentionHandle(model, resolve_config(config, "config"))


class ContrastiveAttentionProcessor(LogitsProcessor):
    """Contrastive attention as a ``generate(logits_processor=[...])`` / pipeline logits processor.

    The logits step is a pass-through: the effect comes from the prefill hooks, which must run before the first
    logits exist, so they are installed when the processor is constructed (on the model given here) and removed
    when the processor is garbage-collected, when ``remove()`` is called, or on leaving ``with processor:``.
    Nothing leaks between ``generate`` calls: each prefill recomputes i*, IA and the scale from its own prompt, and
    the first logits step of each call (``cur_len`` equal to the prompt length just processed) moves that call's
    results to ``self.last`` and frees the per-prefill buffers.

    Args:
        model: the LLaVA model the processor is used with.
        config: a :class:`ContrastiveAttentionConfig` (or anything :func:`resolve_config` accepts).
    """

    def __init__(self, model, config: ConfigLike):
        self.handle = ContrastiveAttentionHandle(model, resolve_config(config, "config"))
        # The model's hooks reference the handle, never the processor, so the processor is freed as soon as
        # generate() drops its LogitsProcessorList, and the finalizer uninstalls everything.
        self._finalizer = weakref.finalize(self, self.handle.remove)
        self._consumed = 0
        self.last: Optional[dict] = None
        self.num_calls = 0

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """Pass-through. Args: input_ids (batch, cur_len); scores (batch, vocab). Returns ``scores`` unchanged."""
        if self.handle.removed:
            raise RuntimeError("ContrastiveAttentionProcessor was removed; create a new one for this generate call")
        state = self.handle.state
        if state.num_prefills > self._consumed:
            last = state.last
            prompt_len = last["image_mask"].shape[1]
            if input_ids.shape[1] == prompt_len:  # first step of a new generate call
                self._consumed = state.num_prefills
                self.last = {k: v for k, v in last.items() if k != "maps"}
                state.last = None  # the big per-layer maps are not kept across calls
                self.num_calls += 1
        return scores

    def remove(self) -> None:
        """Uninstall the hooks now (idempotent)."""
        self._finalizer()

    def __enter__(self) -> "ContrastiveAttentionProcessor":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def _is_decoding_loop_call(args, kwargs) -> bool:
    # generate(custom_generate=<callable>) calls it as the decoding loop:
    # fn(model, input_ids, logits_processor=..., stopping_criteria=..., generation_config=..., use_cache=..., ...)
    return (bool(args) and torch.is_tensor(args[0]) and "use_cache" in kwargs
            and isinstance(kwargs.get("stopping_criteria"), StoppingCriteriaList)
            and isinstance(kwargs.get("generation_config"), GenerationConfig)
            and "prefix_allowed_tokens_fn" not in kwargs and "inputs" not in kwargs)


def generate(model, *args, contrastive_attention: Optional[ConfigLike] = None, **kwargs):
    """``generate`` with contrastive attention; also usable as ``model.generate(..., custom_generate=generate)``.

    Two call conventions are accepted (like ``transformers-community/dola``):

    * ``generate(model, **inputs, contrastive_attention=cfg, max_new_tokens=...)`` and the Hub/local-folder
      convention (``model.generate(custom_generate="<dir or repo>", trust_remote_code=True, ...)`` calls the
      folder's ``generate(model=model, **generate_arguments)``): installs the hooks and runs the stock
      ``GenerationMixin.generate``;
    * ``model.generate(**inputs, custom_generate=generate, contrastive_attention=cfg)``: transformers prepares
      everything and calls this function as the decoding loop; it installs the hooks around the stock decoding
      method of the requested mode (``_sample`` for greedy/sampling, ``_beam_search`` for beams).

    Args:
        model: the LLaVA model.
        contrastive_attention: the config (required).

    Returns:
        What ``generate`` returns (token ids or a ``GenerateOutput``).
    """
    if contrastive_attention is None:
        raise ValueError("contrastive_attention: expected a ContrastiveAttentionConfig (or dict / directory / "
                         "'preset:<name>'), got None")
    config = resolve_config(contrastive_attention)
    if _is_decoding_loop_call(args, kwargs):
        from transformers.generation.utils import GENERATION_MODES_MAPPING

        mode = kwargs["generation_config"].get_generation_mode()
        method_name = GENERATION_MODES_MAPPING[mode]
        if not method_name.startswith("_"):
            raise ValueError(f"generation_config: contrastive attention runs with greedy, sampling or beam search; "
                             f"got generation mode {mode}")
        with ContrastiveAttentionHandle(model, config):
            return getattr(type(model), method_name)(model, *args, **kwargs)
    with ContrastiveAttentionHandle(model, config):
        return GenerationMixin.generate(model, *args, **kwargs)
