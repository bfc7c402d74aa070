"""Compatibility shims that let salesforce-lavis' BLIP-2 Q-Former code run on transformers 5.

What and why (each shim is applied only when the attribute is missing, and is idempotent):

1. ``transformers.modeling_utils.apply_chunking_to_forward`` / ``prune_linear_layer``: LAVIS' ``Qformer.py``,
   ``med.py`` and ``nlvr_encoder.py`` import them from ``modeling_utils``; transformers 5 keeps them only in
   ``transformers.pytorch_utils`` -> re-exported from there.
2. ``find_pruneable_heads_and_indices``: removed in transformers 5 from both ``modeling_utils`` (imported by the
   BERT files) and ``pytorch_utils`` (imported by ``modeling_t5.py``) -> re-implemented with transformers
   4.26's semantics (LAVIS only calls it from ``prune_heads``) and set on both modules.
3. ``transformers.utils.model_parallel_utils``: removed in transformers 5; LAVIS' ``modeling_t5.py`` imports
   ``assert_device_map`` / ``get_device_map`` at module level -> a stub module with 4.26-equivalent functions.
4. ``PreTrainedModel.invert_attention_mask`` / ``get_head_mask``: removed from ``ModuleUtilsMixin`` in
   transformers 5; LAVIS' BERT calls both in every forward -> re-added with the 4.26 behaviour.
5. ``PreTrainedModel.init_weights``: LAVIS' BERT calls ``self.init_weights()`` in ``__init__`` without
   ``post_init()``, so transformers 5's ``tie_weights(recompute_mapping=False)`` finds no
   ``all_tied_weights_keys`` -> the wrapper computes the mapping first when (and only when) it is missing.

Checked on: salesforce-lavis 1.0.2 with transformers 5.23.0 (torch 2.14). transformers 4.x has every attribute,
so nothing is patched there.
"""

from __future__ import annotations

import sys
import types
from typing import Optional

import torch

_APPLIED_FLAG = "_vlplugins_lavis_shim"


def _find_pruneable_heads_and_indices(heads, n_heads: int, head_size: int, already_pruned_heads):
    """transformers 4.26 ``find_pruneable_heads_and_indices``: heads to prune and the flat indices to keep."""
    mask = torch.ones(n_heads, head_size)
    heads = set(heads) - already_pruned_heads
    for head in heads:
        head = head - sum(1 if h < head else 0 for h in already_pruned_heads)
        mask[head] = 0
    mask = mask.view(-1).contiguous().eq(1)
    index = torch.arange(len(mask))[mask].long()
    return heads, index


def _invert_attention_mask(self, encoder_attention_mask: torch.Tensor) -> torch.Tensor:
    """``(B, S)`` or ``(B, T, S)`` 1/0 mask -> additive ``(B, 1, [1|T], S)`` mask (0 keep, dtype-min drop)."""
    if encoder_attention_mask.dim() == 3:
        ext = encoder_attention_mask[:, None, :, :]
    elif encoder_attention_mask.dim() == 2:
        ext = encoder_attention_mask[:, None, None, :]
    else:
        raise ValueError(f"encoder_attention_mask: expected 2 or 3 dims, got {encoder_attention_mask.dim()}")
    ext = ext.to(dtype=self.dtype)
    return (1.0 - ext) * torch.finfo(self.dtype).min


def _get_head_mask(self, head_mask: Optional[torch.Tensor], num_hidden_layers: int,
                   is_attention_chunked: bool = False):
    """transformers 4.26 ``get_head_mask``: ``None`` -> ``[None] * layers``, else a 5-D mask per layer."""
    if head_mask is None:
        return [None] * num_hidden_layers
    if head_mask.dim() == 1:
        head_mask = head_mask[None, None, :, None, None].expand(num_hidden_layers, -1, -1, -1, -1)
    elif head_mask.dim() == 2:
        head_mask = head_mask[:, None, :, None, None]
    head_mask = head_mask.to(dtype=self.dtype)
    if is_attention_chunked:
        head_mask = head_mask.unsqueeze(-1)
    return head_mask


def _model_parallel_utils_module() -> types.ModuleType:
    from math import ceil

    mod = types.ModuleType("transformers.utils.model_parallel_utils")
    mod.__doc__ = "vlplugins stub of the module removed in transformers 5 (only LAVIS' T5 model-parallel path)."

    def assert_device_map(device_map, num_blocks):
        blocks = list(range(0, num_blocks))
        device_map_blocks = [item for sublist in list(device_map.values()) for item in sublist]
        duplicate = [i for i in device_map_blocks if device_map_blocks.count(i) > 1]
        missing = [i for i in blocks if i not in device_map_blocks]
        extra = [i for i in device_map_blocks if i not in blocks]
        if duplicate or missing or extra:
            raise ValueError(f"device_map: duplicate blocks {duplicate}, missing {missing}, extra {extra}")

    def get_device_map(n_layers, devices):
        layers = list(range(n_layers))
        n_blocks = int(ceil(n_layers / len(devices)))
        chunks = [layers[i:i + n_blocks] for i in range(0, n_layers, n_blocks)]
        return dict(zip(devices, chunks))

    mod.assert_device_map = assert_device_map
    mod.get_device_map = get_device_map
    return mod


def apply() -> list[str]:
    """Apply every missing shim; returns the names patched in this call (empty when already applied)."""
    import transformers.modeling_utils as mu
    import transformers.pytorch_utils as pu
    import transformers.utils as tu
    from transformers import PreTrainedModel

    patched: list[str] = []
    for name in ("apply_chunking_to_forward", "prune_linear_layer"):
        if not hasattr(mu, name):
            setattr(mu, name, getattr(pu, name))
            patched.append(f"modeling_utils.{name}")
    for mod, label in ((pu, "pytorch_utils"), (mu, "modeling_utils")):
        if not hasattr(mod, "find_pruneable_heads_and_indices"):
            mod.find_pruneable_heads_and_indices = _find_pruneable_heads_and_indices
            patched.append(f"{label}.find_pruneable_heads_and_indices")
    if "transformers.utils.model_parallel_utils" not in sys.modules:
        try:
            import transformers.utils.model_parallel_utils  # noqa: F401  (present on transformers 4.x)
        except ImportError:
            mod = _model_parallel_utils_module()
            sys.modules[mod.__name__] = mod
            tu.model_parallel_utils = mod
            patched.append("utils.model_parallel_utils")
    if not hasattr(PreTrainedModel, "invert_attention_mask"):
        PreTrainedModel.invert_attention_mask = _invert_attention_mask
        patched.append("PreTrainedModel.invert_attention_mask")
    if not hasattr(PreTrainedModel, "get_head_mask"):
        PreTrainedModel.get_head_mask = _get_head_mask
        patched.append("PreTrainedModel.get_head_mask")
    original = PreTrainedModel.init_weights
    if not getattr(original, _APPLIED_FLAG, False):

        def init_weights(self):
            # LAVIS' BERT calls init_weights() before post_init(): compute the tied-weights mapping it needs.
            if not hasattr(self, "all_tied_weights_keys"):
                self.all_tied_weights_keys = self.get_expanded_tied_weights_keys(all_submodels=False)
            return original(self)

        setattr(init_weights, _APPLIED_FLAG, True)
        init_weights.__doc__ = original.__doc__
        PreTrainedModel.init_weights = init_weights
        patched.append("PreTrainedModel.init_weights")
    return patched
