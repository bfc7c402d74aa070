"""One-pass contrastive attention: a registered attention function + a forward pre-hook (spec §5.2).

Why one pass is exact: the attention maps that drive the decision (layers C and k) are computed before the review
layer r (max(C) < k < r), and the intervention only changes the inputs of layers >= r. A forward with the scaling
applied at layer r therefore sees exactly the same layers 0..r-1 as an unmodified probe forward, so the maps can be
captured during the very forward whose layer-r input they modify.

Three pieces are installed by :class:`ContrastiveAttentionHandle`:

* a forward pre-hook on the multimodal backbone (``model.model``) that reads ``input_ids`` / ``attention_mask``,
  finds the image-token positions of the prompt and arms the per-call :class:`ContrastiveAttentionState`
  (prefill = a forward whose input contains image tokens);
* the attention function ``contrastive_attention_<impl>`` (registered with ``AttentionInterface``, together with
  the matching mask function under the same name with ``AttentionMaskInterface``): it delegates the actual
  attention to the implementation the model was loaded with (``sdpa`` or the model's own ``eager`` function) and,
  at the probe layers C ∪ {k} during the prefill only, also computes the one attention row of the query position
  over the keys (float32), reduces it over heads and keeps its image-token part, renormalised;
* a forward pre-hook on decoder layer r that computes i*, IA and the per-sample ρ-quantile and multiplies the image
  tokens' hidden states with IA below it by λ. Decoding steps (no image tokens in the input) are untouched; the
  KV cache of layers >= r carries the effect.
"""

from __future__ import annotations

import math
import sys
from typing import Optional

import torch
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

from .configuration import ContrastiveAttentionConfig

ATTN_PREFIX = "contrastive_attention_"
SUPPORTED_IMPLEMENTATIONS = ("sdpa", "eager")
_STATE_ATTR = "_contrastive_attention_state"
_HANDLE_ATTR = "_contrastive_attention_handle"
_BLOCK_BYTES = 32 * 2 ** 20  # float32 key block of the probe row (see ContrastiveAttentionState.capture)


# ---------------------------------------------------------------------------------------------- attention functions
def _eager_function(module):
    """The model's own ``eager_attention_forward`` (the function transformers uses for ``"eager"``)."""
    fn = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    if fn is None:
        raise ValueError(f"model: attention module {type(module).__name__} has no module-level "
                         "eager_attention_forward to delegate to")
    return fn


def _make_attention_function(implementation: str):
    def contrastive_attention_forward(module, query, key, value, attention_mask, **kwargs):
        """Attention of ``implementation`` plus, at probe layers during the prefill, the image-attention row.

        Args:
            module: the decoder's attention module (``layer_idx``, ``num_key_value_groups``, ``scaling``).
            query: (batch, heads, q_len, head_dim), RoPE applied.
            key, value: (batch, kv_heads, kv_len, head_dim), cache included.
            attention_mask: whatever the matching mask function produced (bool / additive float / None).

        Returns:
            ``(attn_output (batch, q_len, heads, head_dim), attn_weights or None)`` exactly as the delegate.
        """
        state: Optional[ContrastiveAttentionState] = getattr(module, _STATE_ATTR, None)
        if state is not None and state.active and module.layer_idx in state.probe_layers:
            scaling = kwargs.get("scaling")
            state.capture(module.layer_idx, query, key, module.head_dim ** -0.5 if scaling is None else scaling)
        if implementation == "eager":
            return _eager_function(module)(module, query, key, value, attention_mask, **kwargs)
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    contrastive_attention_forward.__name__ = f"contrastive_attention_{implementation}_forward"
    return contrastive_attention_forward


def register_attention_functions() -> None:
    """Register ``contrastive_attention_sdpa`` / ``contrastive_attention_eager`` (attention + mask functions).

    Idempotent. The mask function registered under the same name is the delegate's own (``sdpa_mask`` /
    ``eager_mask``): without it transformers would pass ``attention_mask=None`` and silently drop causality.
    """
    for impl in SUPPORTED_IMPLEMENTATIONS:
        AttentionInterface.register(ATTN_PREFIX + impl, _make_attention_function(impl))
        AttentionMaskInterface.register(ATTN_PREFIX + impl, ALL_MASK_ATTENTION_FUNCTIONS[impl])


register_attention_functions()


# ---------------------------------------------------------------------------------------------- the maths
def hellinger(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Hellinger distance H(P, Q) = ||√P − √Q||₂ / √2 over the last dimension, in [0, 1].

    Args:
        p, q: (..., n) probability vectors (zeros allowed, e.g. non-image positions of both).

    Returns:
        (...) distances.
    """
    return torch.sqrt(0.5 * (p.sqrt() - q.sqrt()).pow(2).sum(-1))


def rho_quantile(values: torch.Tensor, rho: float) -> torch.Tensor:
    """ρ-quantile with linear interpolation (numpy/torch "linear" definition), as a float64 scalar tensor.

    The position ρ(n − 1) is computed in float64 and snapped to the nearest integer when it is within 1e-9 of
    it: with ρ = 0.2 and n = 36 (or 576) the exact position is the integer 7 (115), but 0.2 is not representable
    and float64 gives 7.000000000000001, which would make the token of rank 7 fall below the threshold or not
    depending on rounding. With the snap exactly ceil(ρ(n − 1)) of n distinct values lie strictly below it.

    Args:
        values: (n,) with n >= 1.
        rho: ρ in (0, 1).
    """
    v = values.detach().double().sort().values
    n = v.numel()
    pos = rho * (n - 1)
    if abs(pos - round(pos)) < 1e-9:
        pos = float(round(pos))
    lo = int(math.floor(pos))
    hi = min(lo + 1, n - 1)
    return v[lo] + (pos - lo) * (v[hi] - v[lo])


def contrastive_scale(maps: dict[int, torch.Tensor], image_mask: torch.Tensor, config: ContrastiveAttentionConfig):
    """i*, IA and the per-position scale from the captured maps (all per sample).

    Args:
        maps: ``{layer: A(layer)}`` with A of shape (batch, seq): float32, zero off the image tokens, summing to 1
            over each row's image tokens. Must contain k and every candidate (or ``pre_layer``).
        image_mask: (batch, seq) bool, True at image tokens (ragged counts per row allowed).
        config: supplies k, C / ``pre_layer``, ρ (``quantile``) and λ (``scale``).

    Returns:
        dict with ``i_star`` (batch,) long layer indices, ``hellinger`` (batch, |C|), ``ia`` (batch, seq) float32
        (0 off the image), ``threshold`` (batch,) float64 ρ-quantile of each row's IA (:func:`rho_quantile`),
        ``suppressed`` (batch, seq) bool, ``scale`` (batch, seq) float32 (λ at suppressed image tokens, 1 elsewhere).
    """
    k = config.post_integration_layer
    candidates = [config.pre_layer] if config.pre_layer is not None else list(config.candidate_layers)
    a_k = maps[k]
    a_c = torch.stack([maps[i] for i in candidates])  # (|C|, batch, seq)
    dist = hellinger(a_c, a_k.unsqueeze(0))  # (|C|, batch)
    choice = dist.argmax(0)  # first maximum on ties (torch.argmax contract)
    rows = torch.arange(a_k.shape[0], device=a_k.device)
    a_star = a_c[choice, rows]
    ia = (a_k - a_star).abs() * image_mask
    threshold = torch.stack([rho_quantile(ia[b][image_mask[b]], float(config.quantile))
                             for b in range(a_k.shape[0])])  # ragged image counts: each row over its own tokens
    suppressed = image_mask & (ia.double() < threshold[:, None])
    scale = torch.where(suppressed, torch.tensor(float(config.scale), device=a_k.device),
                        torch.tensor(1.0, device=a_k.device))
    i_star = torch.tensor(candidates, device=a_k.device)[choice]
    return {"i_star": i_star, "hellinger": dist.transpose(0, 1), "ia": ia, "threshold": threshold,
            "suppressed": suppressed, "scale": scale}


# ---------------------------------------------------------------------------------------------- per-call state
class ContrastiveAttentionState:
    """Per-forward state of one handle: armed by a prefill, consumed at layer r, then inert until the next prefill.

    Attributes:
        active: True between the prefill's backbone pre-hook and the layer-r pre-hook.
        image_mask: (batch, seq) bool image positions of the current prefill chunk.
        query_index: (batch,) position (in the chunk) of each row's query token (last non-padding token).
        key_valid: (batch, past + seq) bool keys visible from the query token (causal + padding).
        maps: ``{layer: (batch, seq) float32}`` captured A(l).
        last: results (see :func:`contrastive_scale`) of the latest prefill, detached, for inspection.
        num_prefills: how many prefills were processed (a counter, used by tests and the logits processor).
    """

    def __init__(self, config: ContrastiveAttentionConfig):
        self.config = config
        self.probe_layers = frozenset(config.probe_layers)
        self.reset()
        self.last: Optional[dict] = None
        self.num_prefills = 0

    def reset(self) -> None:
        """Drop the per-prefill buffers (maps, masks) and disarm."""
        self.active = False
        self.image_mask = None
        self.query_index = None
        self.key_valid = None
        self.past_length = 0
        self.maps: dict[int, torch.Tensor] = {}
        self._bias: dict[int, torch.Tensor] = {}

    def begin(self, image_mask: torch.Tensor, attention_mask: Optional[torch.Tensor], past_length: int) -> None:
        """Arm for a prefill chunk.

        Args:
            image_mask: (batch, seq) bool image positions; every row must contain at least one.
            attention_mask: (batch, past + seq) 2-D padding mask (1 = token) or None (no padding).
            past_length: number of cached positions before this chunk.
        """
        self.reset()
        batch, seq = image_mask.shape
        device = image_mask.device
        if attention_mask is not None and attention_mask.dim() == 2:
            chunk = attention_mask[:, -seq:].to(device=device).bool()
            # last non-padding position per row (left padding: seq-1; right padding: before the pads)
            flipped_first = chunk.flip(-1).int().argmax(-1)
            self.query_index = (seq - 1 - flipped_first).long()
            pad_valid = attention_mask.to(device=device).bool()
            if pad_valid.shape[1] < past_length + seq:  # defensive: a mask covering only the chunk
                pad_valid = torch.cat([pad_valid.new_ones(batch, past_length + seq - pad_valid.shape[1]), pad_valid],
                                      dim=1)
            pad_valid = pad_valid[:, -(past_length + seq):]
        else:
            self.query_index = torch.full((batch,), seq - 1, dtype=torch.long, device=device)
            pad_valid = torch.ones(batch, past_length + seq, dtype=torch.bool, device=device)
        positions = torch.arange(past_length + seq, device=device)
        causal = positions[None, :] <= (past_length + self.query_index)[:, None]
        self.key_valid = causal & pad_valid
        self.image_mask = image_mask
        self.past_length = past_length
        self.active = True

    def capture(self, layer_idx: int, query: torch.Tensor, key: torch.Tensor, scaling: float) -> None:
        """Store A(layer_idx) from the layer's post-RoPE query/key (one softmax row per head, float32).

        Args:
            query: (batch, heads, seq, head_dim).
            key: (batch, kv_heads, kv_len, head_dim) with kv_len >= past + seq (static caches are longer).
        """
        batch, heads, seq, head_dim = query.shape
        if seq != self.image_mask.shape[1]:
            return  # not the prefill chunk this state was armed for
        kv_heads, kv_len = key.shape[1], key.shape[2]
        rows = torch.arange(batch, device=query.device)
        q = query[rows, :, self.query_index].float()  # (batch, heads, head_dim)
        # GQA without repeat_kv: group the query heads by their key head
        q = q.reshape(batch, kv_heads, heads // kv_heads, head_dim)
        # float32 scores; the float32 copy of the keys is made in blocks of at most _BLOCK_BYTES so this probe never
        # needs more than a few MiB beyond the (batch, heads, kv_len) row (peak memory stays the model's own)
        block = max(1, _BLOCK_BYTES // (batch * kv_heads * head_dim * 4))
        scores = torch.cat([torch.matmul(q, key[:, :, j:j + block].float().transpose(-1, -2))
                            for j in range(0, kv_len, block)], dim=-1).reshape(batch, heads, kv_len) * scaling
        bias = self._bias.get(kv_len)
        if bias is None:  # additive mask, built once per prefill (static caches have kv_len > past + seq)
            valid = torch.zeros(batch, kv_len, dtype=torch.bool, device=query.device)
            n = min(kv_len, self.key_valid.shape[1])
            valid[:, :n] = self.key_valid[:, :n]
            bias = torch.zeros(batch, 1, kv_len, device=query.device).masked_fill_(~valid[:, None, :], float("-inf"))
            self._bias[kv_len] = bias
        scores = scores + bias
        weights = torch.softmax(scores, dim=-1)  # (batch, heads, kv_len), float32
        if self.config.head_reduction == "mean":
            reduced = weights.mean(1)
        else:
            reduced = weights.amax(1)
        start = self.past_length
        image_part = reduced[:, start:start + seq] * self.image_mask
        self.maps[layer_idx] = image_part / image_part.sum(-1, keepdim=True)

    def finish(self) -> torch.Tensor:
        """Compute i*, IA and the scale; disarm. Returns the (batch, seq) float32 scale."""
        missing = sorted(set(self.config.probe_layers) - set(self.maps))
        if missing:
            raise RuntimeError(f"contrastive attention: no attention captured at layers {missing} before the "
                               "review layer; was the attention implementation changed after enabling?")
        result = contrastive_scale(self.maps, self.image_mask, self.config)
        self.last = {"maps": {k: v.detach() for k, v in self.maps.items()},
                     "image_mask": self.image_mask, "query_index": self.query_index,
                     **{k: v.detach() for k, v in result.items()}}
        self.num_prefills += 1
        scale = result["scale"]
        self.reset()
        return scale


# ---------------------------------------------------------------------------------------------- installation
def language_model(model):
    """The Llama decoder of a LLaVA / LLaVA-NeXT model (``model.model.language_model``)."""
    backbone = getattr(model, "model", None)
    lm = getattr(backbone, "language_model", None)
    if lm is None or not hasattr(lm, "layers"):
        raise ValueError(f"model: expected a LLaVA model with .model.language_model.layers, got {type(model).__name__}")
    return lm


def image_token_mask(model, input_ids: Optional[torch.Tensor], inputs_embeds: Optional[torch.Tensor]):
    """(batch, seq) bool: positions holding the image token (``config.image_token_id``)."""
    token_id = model.config.image_token_id
    if input_ids is not None:
        return input_ids == token_id
    embed = model.get_input_embeddings()(torch.tensor(token_id, device=inputs_embeds.device))
    return (inputs_embeds == embed.to(inputs_embeds.dtype)).all(-1)


class ContrastiveAttentionHandle:
    """Contrastive attention installed on a LLaVA model; ``remove()`` (or leaving the ``with`` block) undoes it.

    Removing restores the text model's previous attention implementation name, removes every hook and attribute,
    so outputs are bit-identical to a model that never had it.

    Args:
        model: ``LlavaForConditionalGeneration`` or ``LlavaNextForConditionalGeneration`` whose text model uses
            ``"sdpa"`` or ``"eager"`` attention.
        config: the :class:`ContrastiveAttentionConfig`; validated against ``model``.
        intervene: False installs only the capture (analysis): ``state.maps`` holds A(l) after a forward.
        probe_layers: extra layers whose A(l) are captured (analysis).
    """

    def __init__(self, model, config: ContrastiveAttentionConfig, *, intervene: bool = True,
                 probe_layers: Optional[list] = None):
        if not isinstance(config, ContrastiveAttentionConfig):
            raise ValueError(f"config: expected a ContrastiveAttentionConfig, got {type(config).__name__}")
        config.validate(model)
        lm = language_model(model)
        if getattr(lm, _HANDLE_ATTR, None) is not None:
            raise ValueError("model: contrastive attention is already enabled on this model; remove() it first")
        previous = lm.config._attn_implementation
        if previous not in SUPPORTED_IMPLEMENTATIONS:
            raise ValueError(f"model: text attn_implementation must be one of {SUPPORTED_IMPLEMENTATIONS} "
                             f"(load with attn_implementation='sdpa' or 'eager'), got {previous!r}")
        self.model = model
        self.config = config
        self.previous_implementation = previous
        self.state = ContrastiveAttentionState(config)
        if probe_layers is not None:  # analysis: capture more layers (and no intervention when intervene=False)
            bad = [i for i in probe_layers if not 0 <= i < len(lm.layers)]
            if bad:
                raise ValueError(f"probe_layers: expected layers in [0, {len(lm.layers) - 1}], got {bad}")
            self.state.probe_layers = frozenset(probe_layers) | self.state.probe_layers
        if previous == "eager":
            _eager_function(lm.layers[0].self_attn)  # fail now, not in the middle of generate
        self._attn_modules = [lm.layers[i].self_attn for i in sorted(self.state.probe_layers)]
        for module in self._attn_modules:
            setattr(module, _STATE_ATTR, self.state)
        self._hooks = [model.model.register_forward_pre_hook(self._backbone_pre_hook, with_kwargs=True)]
        if intervene:
            self._hooks.append(lm.layers[config.review_layer].register_forward_pre_hook(self._review_pre_hook,
                                                                                         with_kwargs=True))
        setattr(lm, _HANDLE_ATTR, self)
        self._lm = lm
        self.removed = False
        try:
            model.set_attn_implementation({"text_config": ATTN_PREFIX + previous})
        except Exception:
            self.remove()  # leave the model exactly as it was
            raise

    # hooks ---------------------------------------------------------------------------------------------------
    def _backbone_pre_hook(self, module, args, kwargs):
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        inputs_embeds = kwargs.get("inputs_embeds")
        if input_ids is None and inputs_embeds is None:
            return None
        cache = kwargs.get("past_key_values")
        past = int(cache.get_seq_length()) if cache is not None else 0
        seq = (input_ids if input_ids is not None else inputs_embeds).shape[1]
        if past > 0 and seq == 1:
            # a decoding step (one new text token): nothing to do, the KV cache carries the effect; returning
            # before looking at the ids avoids a device sync per generated token
            if self.state.active:
                self.state.reset()
            return None
        image_mask = image_token_mask(self.model, input_ids, inputs_embeds)
        has_image = image_mask.any(-1)
        if bool(has_image.any()):
            if not bool(has_image.all()):
                rows = (~has_image).nonzero().flatten().tolist()
                raise ValueError(f"input_ids: contrastive attention needs image tokens (id "
                                 f"{self.model.config.image_token_id}) in every prompt; rows {rows} have none")
            self.state.begin(image_mask, kwargs.get("attention_mask"), past)
        elif past == 0:
            raise ValueError(f"input_ids: contrastive attention needs image tokens (id "
                             f"{self.model.config.image_token_id}) in the prompt; received none")
        else:
            self.state.reset()  # a decoding step: nothing to do, the KV cache carries the effect
        return None

    def _review_pre_hook(self, module, args, kwargs):
        if not self.state.active:
            return None
        if args:
            hidden, rest = args[0], args[1:]
        else:
            hidden, rest = kwargs["hidden_states"], None
        scale = self.state.finish().to(device=hidden.device, dtype=hidden.dtype)
        hidden = hidden * scale.unsqueeze(-1)  # ×λ at suppressed image tokens, ×1 (exact) elsewhere
        if rest is None:
            kwargs = dict(kwargs, hidden_states=hidden)
            return args, kwargs
        return (hidden, *rest), kwargs

    # lifecycle -----------------------------------------------------------------------------------------------
    @property
    def last(self) -> Optional[dict]:
        """Results of the latest prefill (``i_star``, ``ia``, ``threshold``, ``suppressed``, ``scale``, ``maps``)."""
        return self.state.last

    def remove(self) -> None:
        """Uninstall: restore the attention implementation, remove hooks and state. Idempotent."""
        if self.removed:
            return
        self.removed = True
        for h in self._hooks:
            h.remove()
        for module in self._attn_modules:
            if getattr(module, _STATE_ATTR, None) is self.state:
                delattr(module, _STATE_ATTR)
        if getattr(self._lm, _HANDLE_ATTR, None) is self:
            delattr(self._lm, _HANDLE_ATTR)
        self.model.set_attn_implementation({"text_config": self.previous_implementation})
        self.state.reset()

    def __enter__(self) -> "ContrastiveAttentionHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()
