"""Layer analysis for choosing k, r and C on a new model (the paper's §3 analyses, one prompt at a time).

:func:`analyze_layers` runs, for one image + prompt (+ answer):

* the layer-wise image-token masking curve: for every decoder layer l, the image tokens' hidden states are set to
  zero at the input of layer l, and the change of the answer's log-probability is recorded (large drops at early
  "fusion" layers and at the late "review" layer are what the paper uses to pick C and r);
* A(l) for every layer (the attention of the query position over the image tokens, head-reduced, renormalised);
* the Hellinger matrix H(A(i), A(j)) over all layers, i* = argmax over C of H(A(i), A(k)), IA = |A(k) − A(i*)|
  and the tokens the method would suppress.

:func:`save_report` writes a PNG (masking curve + Hellinger matrix + IA heatmap over the image) and a JSON.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .configuration import ContrastiveAttentionConfig
from .hooks import ContrastiveAttentionHandle, contrastive_scale, hellinger, image_token_mask, language_model


@dataclass
class LayerAnalysis:
    """Numbers produced by :func:`analyze_layers` (all plain Python lists, JSON-serialisable).

    Attributes:
        num_layers: L, decoder layers.
        num_image_tokens: N, image tokens of the prompt.
        answer_ids: the answer tokens whose log-probability is measured.
        base_logprob: log p(answer | image, prompt) of the unmodified model.
        masking_logprob: (L,) log p(answer) with the image hidden states zeroed at the input of layer l.
        masking_delta: (L,) masking_logprob − base_logprob (negative = the layer needs the image).
        attention: (L, N) A(l) over the image tokens.
        hellinger: (L, L) H(A(i), A(j)).
        post_integration_layer, review_layer, candidate_layers: the config analysed.
        hellinger_to_k: (|C|,) H(A(i), A(k)) for i in C.
        i_star: the chosen pre-integration layer.
        ia: (N,) |A(k) − A(i*)|.
        threshold: the ρ-quantile of ia.
        suppressed: (N,) bools: tokens scaled by λ at layer r.
        grid: (rows, cols) of the square image-token grid used for the heatmap (the first rows·cols tokens:
            the whole image for LLaVA-1.5, the base tile for LLaVA-NeXT), or None.
    """

    num_layers: int
    num_image_tokens: int
    answer_ids: list
    base_logprob: float
    masking_logprob: list
    masking_delta: list
    attention: list
    hellinger: list
    post_integration_layer: int
    review_layer: int
    candidate_layers: list
    hellinger_to_k: list
    i_star: int
    ia: list
    threshold: float
    suppressed: list
    grid: Optional[list] = field(default=None)

    def to_json(self) -> str:
        """JSON text of every field."""
        return json.dumps(asdict(self), indent=1)


def _answer_logprob(model, inputs: dict, answer: torch.Tensor) -> torch.Tensor:
    """Sum of log p(answer_t | prefix) by teacher forcing; inputs already contain prompt + answer."""
    logits = model(**inputs).logits[0].float()  # (seq, vocab)
    n = answer.numel()
    logp = torch.log_softmax(logits[-n - 1:-1], dim=-1)
    return logp.gather(-1, answer.view(-1, 1)).sum()


@torch.no_grad()
def analyze_layers(model, inputs: dict, config: Optional[ContrastiveAttentionConfig] = None,
                   answer_ids: Optional[torch.Tensor] = None) -> LayerAnalysis:
    """Layer-wise masking curve, per-layer image attention, Hellinger matrix and i* for one prompt.

    Args:
        model: LLaVA / LLaVA-NeXT model (sdpa or eager).
        inputs: processor output for ONE sample: ``input_ids`` (1, T) with the image tokens, ``pixel_values``,
            optional ``attention_mask`` and ``image_sizes``.
        config: layers to analyse (k, r, C, ρ, λ); default: the model's preset values scaled to its depth
            (k = L − 4, r = L − 3, C = early layers) when None.
        answer_ids: (n,) answer tokens whose log-probability is measured; default: the model's greedy first token.

    Returns:
        :class:`LayerAnalysis`.
    """
    ids = inputs.get("input_ids")
    if ids is None or ids.dim() != 2 or ids.shape[0] != 1:
        raise ValueError(f"inputs: expected input_ids of shape (1, seq), got "
                         f"{None if ids is None else tuple(ids.shape)}")
    image_mask = image_token_mask(model, ids, None)[0]
    if not bool(image_mask.any()):
        raise ValueError(f"inputs: expected image tokens (id {model.config.image_token_id}) in input_ids; got none")
    layers = language_model(model).layers
    num_layers = len(layers)
    if config is None:
        config = default_config_for(num_layers)
    config.validate(model)
    device = next(model.parameters()).device
    inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in inputs.items()}

    # A(l) for every layer, no intervention
    with ContrastiveAttentionHandle(model, config, intervene=False, probe_layers=list(range(num_layers))) as h:
        logits = model(**inputs).logits
        maps = dict(h.state.maps)
        h.state.reset()
    attention = torch.stack([maps[layer][0][image_mask] for layer in range(num_layers)])  # (L, N)
    hell = hellinger(attention[:, None, :], attention[None, :, :])  # (L, L)
    result = contrastive_scale(maps, image_mask[None], config)

    # answer and masking curve
    if answer_ids is None:
        answer_ids = logits[0, -1].argmax().view(1)
    answer_ids = answer_ids.to(device).view(-1)
    full = dict(inputs)
    full["input_ids"] = torch.cat([ids.to(device), answer_ids[None]], dim=1)
    if full.get("attention_mask") is not None:
        full["attention_mask"] = torch.cat([full["attention_mask"],
                                            full["attention_mask"].new_ones(1, answer_ids.numel())], dim=1)
    base = _answer_logprob(model, full, answer_ids).item()
    keep = torch.ones(full["input_ids"].shape[1], device=device)
    keep[: image_mask.numel()][image_mask.to(device)] = 0.0
    curve = []
    for layer in range(num_layers):
        def zero_image(module, args, _keep=keep):
            hidden = args[0]
            return (hidden * _keep.to(hidden.dtype)[None, :, None], *args[1:])

        hook = layers[layer].register_forward_pre_hook(zero_image)
        try:
            curve.append(_answer_logprob(model, full, answer_ids).item())
        finally:
            hook.remove()

    n = int(image_mask.sum())
    side = _grid_side(model, n)
    k = config.post_integration_layer
    return LayerAnalysis(
        num_layers=num_layers, num_image_tokens=n, answer_ids=answer_ids.tolist(), base_logprob=base,
        masking_logprob=curve, masking_delta=[c - base for c in curve],
        attention=attention.tolist(), hellinger=hell.tolist(),
        post_integration_layer=k, review_layer=config.review_layer,
        candidate_layers=[config.pre_layer] if config.pre_layer is not None else list(config.candidate_layers),
        hellinger_to_k=result["hellinger"][0].tolist(), i_star=int(result["i_star"][0]),
        ia=result["ia"][0][image_mask].tolist(), threshold=float(result["threshold"][0]),
        suppressed=result["suppressed"][0][image_mask].tolist(), grid=None if side is None else [side, side])


def default_config_for(num_layers: int) -> ContrastiveAttentionConfig:
    """LLaVA-1.5-7B's layer choice (k=28, r=29 of 32, C = fusion layers) rescaled to ``num_layers`` layers."""
    if num_layers < 3:
        raise ValueError(f"num_layers: expected >= 3 decoder layers, got {num_layers}")
    k = max(1, round(28 * num_layers / 32))
    k = min(k, num_layers - 2)
    r = k + 1
    cands = sorted({min(k - 1, round(c * num_layers / 32)) for c in (2, 4, 8, 11, 12, 13)})
    return ContrastiveAttentionConfig(post_integration_layer=k, review_layer=r, candidate_layers=cands)


def _grid_side(model, n: int) -> Optional[int]:
    vc = model.config.vision_config
    side = vc.image_size // vc.patch_size
    if side * side <= n:
        return side
    root = int(math.isqrt(n))
    return root if root * root == n else None


def save_report(analysis: LayerAnalysis, out_dir, image=None, title: str = "") -> dict:
    """Write ``analysis.json`` and ``analysis.png`` (masking curve, Hellinger matrix, IA heatmap over the image).

    Args:
        analysis: from :func:`analyze_layers`.
        out_dir: directory (created).
        image: the PIL image the prompt was about (for the overlay); None draws the heatmap alone.

    Returns:
        ``{"json": path, "png": path}``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "analysis.json"
    json_path.write_text(analysis.to_json(), encoding="utf-8")

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    layers = np.arange(analysis.num_layers)
    ax = axes[0]
    ax.plot(layers, analysis.masking_delta, marker="o")
    ax.axhline(0.0, color="grey", lw=0.8)
    for c in analysis.candidate_layers:
        ax.axvline(c, color="tab:green", ls=":", lw=0.8)
    ax.axvline(analysis.post_integration_layer, color="tab:orange", ls="--", label="k")
    ax.axvline(analysis.review_layer, color="tab:red", ls="--", label="r")
    ax.axvline(analysis.i_star, color="tab:green", lw=1.5, label="i*")
    ax.set_xlabel("decoder layer (0-based) whose image states are zeroed")
    ax.set_ylabel("Δ log p(answer)")
    ax.set_title("layer-wise image masking")
    ax.legend(loc="best")
    ax = axes[1]
    im = ax.imshow(np.array(analysis.hellinger), cmap="viridis", vmin=0.0)
    ax.set_title("Hellinger(A(i), A(j))")
    ax.set_xlabel("layer j")
    ax.set_ylabel("layer i")
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax = axes[2]
    ia = np.array(analysis.ia)
    if analysis.grid is not None:
        rows, cols = analysis.grid
        heat = ia[: rows * cols].reshape(rows, cols)
        if image is not None:
            w, h = image.size
            if analysis.num_image_tokens == rows * cols and w != h:
                # LLaVA-1.5's CLIP preprocessing resizes the short side and centre-crops: show that square
                side = min(w, h)
                left, top = (w - side) // 2, (h - side) // 2
                image = image.crop((left, top, left + side, top + side))
            ax.imshow(np.asarray(image.convert("RGB")))
            w, h = image.size
            ax.imshow(heat, cmap="jet", alpha=0.5, extent=(0, w, h, 0), interpolation="nearest")
        else:
            ax.imshow(heat, cmap="jet")
    else:
        ax.plot(ia)
    ax.set_title(f"IA = |A({analysis.post_integration_layer}) - A({analysis.i_star})|")
    ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    png_path = out / "analysis.png"
    fig.savefig(png_path, dpi=80)
    plt.close(fig)
    return {"json": str(json_path), "png": str(png_path)}


def word_ids(text: str, vocab_size: int = 32000) -> list:
    """Deterministic word -> id mapping (crc32 into [3, vocab_size)) for tokenizer-less preset models."""
    import zlib

    return [3 + zlib.crc32(w.encode("utf-8")) % (vocab_size - 3) for w in text.split()]


@torch.no_grad()
def prepare_inputs(model, image, prompt: str, processor=None, answer: Optional[str] = None):
    """Model inputs for one image + prompt (and the answer ids, if ``answer`` is given).

    With a ``processor`` (a real checkpoint's ``AutoProcessor``), ``"<image>"`` is inserted as
    ``"USER: <image>\\n{prompt} ASSISTANT:"`` when the prompt lacks it. Without one (random-weight presets, no
    tokenizer offline), the image is preprocessed with a CLIP / LLaVA-NeXT image processor built from the model
    config and the words are mapped to ids by :func:`word_ids`: ``[BOS] + image tokens + words``.

    Returns:
        (inputs dict with input_ids (1, T), attention_mask, pixel_values[, image_sizes]; answer ids (n,) or None).
    """
    if processor is not None:
        text = prompt if "<image>" in prompt else f"USER: <image>\n{prompt} ASSISTANT:"
        inputs = dict(processor(images=image, text=text, return_tensors="pt"))
        answer_ids = None
        if answer:
            answer_ids = processor.tokenizer(answer, add_special_tokens=False, return_tensors="pt").input_ids[0]
        return inputs, answer_ids
    from transformers import CLIPImageProcessor, LlavaNextImageProcessor

    cfg = model.config
    size = cfg.vision_config.image_size
    image = image.convert("RGB")
    if hasattr(cfg, "image_grid_pinpoints"):
        proc = LlavaNextImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                                       image_grid_pinpoints=cfg.image_grid_pinpoints)
        pix = proc(images=image, return_tensors="pt")
        feats = model.model.get_image_features(pix["pixel_values"].to(model.dtype), pix["image_sizes"],
                                               vision_feature_layer=cfg.vision_feature_layer,
                                               vision_feature_select_strategy=cfg.vision_feature_select_strategy)
        n_img = feats.pooler_output[0].shape[0]
        extra = {"pixel_values": pix["pixel_values"], "image_sizes": pix["image_sizes"]}
    else:
        proc = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
        extra = {"pixel_values": proc(images=image, return_tensors="pt")["pixel_values"]}
        n_img = (size // cfg.vision_config.patch_size) ** 2
        if cfg.vision_feature_select_strategy == "full":
            n_img += 1
    vocab = min(cfg.text_config.vocab_size, cfg.image_token_id)
    ids = [cfg.text_config.bos_token_id or 1] + [cfg.image_token_id] * n_img + word_ids(prompt, vocab)
    input_ids = torch.tensor([ids])
    inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), **extra}
    answer_ids = torch.tensor(word_ids(answer, vocab)) if answer else None
    return inputs, answer_ids
