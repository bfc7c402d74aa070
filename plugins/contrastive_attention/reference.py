"""The naive two-pass implementation (spec §1.3), kept for benchmarks and the demo as the baseline.

Pass 1 switches the text model to eager attention and runs a prefill with ``output_attentions=True`` to get every
layer's full attention matrices; pass 2 runs ``generate`` with a forward pre-hook on layer r that scales the image
hidden states. It costs a second prefill and (batch, heads, T, T) attention matrices per layer; the one-pass
implementation in :mod:`.hooks` gives the same result without either.
"""

from __future__ import annotations

import torch

from .configuration import ContrastiveAttentionConfig
from .hooks import contrastive_scale, image_token_mask, language_model


@torch.no_grad()
def two_pass_scale(model, inputs: dict, config: ContrastiveAttentionConfig) -> dict:
    """Pass 1: eager prefill with ``output_attentions=True``; returns :func:`~.hooks.contrastive_scale`'s dict.

    Args:
        model: LLaVA / LLaVA-NeXT (any attention implementation; eager is used for this pass and restored).
        inputs: ``input_ids`` (batch, T), ``attention_mask``, ``pixel_values`` [, ``image_sizes``].
    """
    config.validate(model)
    previous = model.config.text_config._attn_implementation
    model.set_attn_implementation({"text_config": "eager"})
    try:
        out = model(**inputs, output_attentions=True, logits_to_keep=1)
    finally:
        model.set_attn_implementation({"text_config": previous})
    ids = inputs["input_ids"]
    image_mask = image_token_mask(model, ids, None)
    batch, seq = ids.shape
    mask = inputs.get("attention_mask")
    if mask is not None:
        query = (seq - 1 - mask.bool().flip(-1).int().argmax(-1)).long()
    else:
        query = torch.full((batch,), seq - 1, dtype=torch.long, device=ids.device)
    rows = torch.arange(batch, device=ids.device)
    maps = {}
    for layer in config.probe_layers:
        w = out.attentions[layer][rows, :, query].float()  # (batch, heads, seq)
        a = (w.mean(1) if config.head_reduction == "mean" else w.amax(1)) * image_mask
        maps[layer] = a / a.sum(-1, keepdim=True)
    return contrastive_scale(maps, image_mask, config)


@torch.no_grad()
def two_pass_generate(model, inputs: dict, config: ContrastiveAttentionConfig, **generate_kwargs):
    """Naive reference: :func:`two_pass_scale`, then ``generate`` with the scale applied at layer r's input.

    Returns:
        What ``model.generate(**inputs, **generate_kwargs)`` returns.
    """
    scale = two_pass_scale(model, inputs, config)["scale"]
    seq = inputs["input_ids"].shape[1]

    def hook(module, args):
        hidden = args[0]
        if hidden.shape[1] != seq:
            return None  # decoding step: the KV cache already holds the scaled image tokens
        s = scale.repeat_interleave(hidden.shape[0] // scale.shape[0], dim=0)  # beams / num_return_sequences
        return (hidden * s.to(hidden.device, hidden.dtype).unsqueeze(-1), *args[1:])

    handle = language_model(model).layers[config.review_layer].register_forward_pre_hook(hook)
    try:
        return model.generate(**inputs, **generate_kwargs)
    finally:
        handle.remove()


def synthetic_inputs(model, batch_size: int = 1, text_len: int = 8, device="cpu", dtype=torch.float32, seed: int = 0):
    """Random-pixel, random-token batch for benchmarks and the demo (no tokenizer needed), left padded.

    Rows are ``[BOS] + image tokens + text`` with text lengths ``text_len - (row % 3)`` (so rows get padded).
    LLaVA-1.5: ``config.image_seq_length`` image tokens; LLaVA-NeXT: one (size, 2*size) image per row (base tile
    + 2 tiles) with the token count the model computes for it.

    Returns:
        dict with ``input_ids`` (batch, T), ``attention_mask``, ``pixel_values`` [, ``image_sizes``].
    """
    from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    size = cfg.vision_config.image_size
    extra = {}
    if hasattr(cfg, "image_grid_pinpoints"):
        hw = [size, 2 * size]
        n_p = image_size_to_num_patches(hw, cfg.image_grid_pinpoints, size)
        pixel_values = torch.randn(batch_size, n_p, 3, size, size, generator=g)
        extra["image_sizes"] = torch.tensor([hw] * batch_size)
        with torch.no_grad():
            n_img = model.model.get_image_features(pixel_values[:1].to(device, model.dtype),
                                                   extra["image_sizes"][:1].to(device),
                                                   vision_feature_layer=cfg.vision_feature_layer,
                                                   vision_feature_select_strategy=cfg.vision_feature_select_strategy
                                                   ).pooler_output[0].shape[0]
    else:
        pixel_values = torch.randn(batch_size, 3, size, size, generator=g)
        n_img = cfg.image_seq_length
    rows = [[1] + [cfg.image_token_id] * n_img + torch.randint(3, 30000, (max(1, text_len - b % 3),),
                                                                 generator=g).tolist() for b in range(batch_size)]
    width = max(len(r) for r in rows)
    ids = torch.full((batch_size, width), cfg.text_config.pad_token_id or 0, dtype=torch.long)
    mask = torch.zeros(batch_size, width, dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, width - len(r):] = torch.tensor(r)
        mask[b, width - len(r):] = 1
    extra = {k: v.to(device) for k, v in extra.items()}
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device),
            "pixel_values": pixel_values.to(device, dtype), **extra}
