"""``HyperbolicBlip2ForImageTextRetrieval``: transformers' ``Blip2ForImageTextRetrieval`` with a hyperbolic ITC.

Forward (training, BLIP-2 stage 1 with the paper's changes):

1. Random Text Pruning of the captions (training only, :func:`.data.random_text_pruning`).
2. Image: ViT -> Q-Former queries -> ``vision_projection`` -> e_j (unnormalised, one per query).
   Text: Q-Former text encoder -> [CLS] -> ``text_projection`` -> u.
3. Head: α·e_j, α·u (MERU scale, <= 1) -> exp^c_0 onto the Poincaré ball; radius = d_c(0, x) = 2|α·e| exactly.
4. ITC: s(I, T) = cos(exp0(α e_j*), exp0(α u)) with j* the best query (eval) or RQS (training), logits s/τ,
   symmetric cross-entropy with label smoothing 0.1. ``loss_type="poincare_distance"`` uses -d_c instead.
   Because exp^c_0 is a positive radial rescaling, the cosine values equal the Euclidean BLIP-2 ones; the
   hyperbolic readout is the radius.
5. ITM as BLIP-2: hard negatives from the softmax of the max-over-queries ITC logits.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from transformers import Blip2ForImageTextRetrieval, PreTrainedModel
from transformers.utils import ModelOutput

from ..hub.cards import build_model_card
from ..hub.checkpoint import WEIGHTS_NAME, HeadOnlyMixin, load_reference_model, save_safetensors
from .configuration import HyperbolicBlip2Config
from .data import check_captions, random_text_pruning
from .head import BallEmbedding, HyperbolicITCHead
from .losses import itc_loss, itm_loss, sample_hard_negatives

PAPER_URL = "https://arxiv.org/abs/2408.05097"


@dataclass
class HyperbolicBlip2Output(ModelOutput):
    r"""Outputs of :class:`HyperbolicBlip2ForImageTextRetrieval`.

    Args:
        loss: ``()`` ``loss_itc + itm_weight * loss_itm`` (when ``return_loss``).
        loss_itc: ``()`` hyperbolic ITC loss.
        loss_itm: ``()`` ITM loss with hard negatives (``None`` when ITM is off or the batch has one pair).
        logits_per_image: ``(num_images, num_texts)`` s(I, T)/τ.
        logits_per_text: ``(num_texts, num_images)`` transpose of ``logits_per_image``.
        image_embeds: ``(num_images, num_queries, dim)`` ball points of every query.
        text_embeds: ``(num_texts, dim)`` ball points of the texts.
        image_radius: ``(num_images, num_queries)`` hyperbolic radius of every query.
        image_radius_selected: ``(num_images,)`` radius of the query selected for the paired text (diagonal)
            when ``num_images == num_texts``, else for the best-scoring text.
        text_radius: ``(num_texts,)`` hyperbolic radius of the texts.
        image_ball_norm / text_ball_norm: Euclidean norms of the ball points (monotone in the radius).
        query_index: ``(num_images, num_texts)`` query used for each score (best or RQS-drawn).
        similarity: ``(num_images, num_texts)`` s(I, T) before the temperature.
    """

    loss: Optional[torch.Tensor] = None
    loss_itc: Optional[torch.Tensor] = None
    loss_itm: Optional[torch.Tensor] = None
    logits_per_image: Optional[torch.Tensor] = None
    logits_per_text: Optional[torch.Tensor] = None
    image_embeds: Optional[torch.Tensor] = None
    text_embeds: Optional[torch.Tensor] = None
    image_radius: Optional[torch.Tensor] = None
    image_radius_selected: Optional[torch.Tensor] = None
    text_radius: Optional[torch.Tensor] = None
    image_ball_norm: Optional[torch.Tensor] = None
    text_ball_norm: Optional[torch.Tensor] = None
    query_index: Optional[torch.Tensor] = None
    similarity: Optional[torch.Tensor] = None


def check_pixel_values(pixel_values: torch.Tensor) -> None:
    """Raise ``ValueError`` naming ``pixel_values`` unless it is a finite ``(batch, 3, H, W)`` float tensor."""
    if not isinstance(pixel_values, torch.Tensor) or pixel_values.dim() != 4:
        shape = tuple(pixel_values.shape) if isinstance(pixel_values, torch.Tensor) else type(pixel_values).__name__
        raise ValueError(f"pixel_values: expected a (batch, 3, height, width) tensor, got {shape}")
    if not bool(torch.isfinite(pixel_values).all()):
        bad = int((~torch.isfinite(pixel_values)).sum())
        raise ValueError(f"pixel_values: expected finite values, got {bad} NaN/inf entries")


class HyperbolicBlip2PreTrainedModel(PreTrainedModel):
    """Base class tying :class:`HyperbolicBlip2Config` to the transformers machinery."""

    config_class = HyperbolicBlip2Config
    config: HyperbolicBlip2Config
    base_model_prefix = "hyperbolic_blip2"
    main_input_name = "pixel_values"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = False
    _no_split_modules = ["Blip2Attention", "Blip2QFormerMultiHeadAttention", "Blip2EncoderLayer",
                         "Blip2TextEmbeddings", "Blip2VisionEmbeddings"]

    @torch.no_grad()
    def _init_weights(self, module):
        # Only the head is initialised here; the base keeps its (pretrained or preset) weights.
        if isinstance(module, HyperbolicITCHead):
            module.reset_parameters()


class HyperbolicBlip2ForImageTextRetrieval(HeadOnlyMixin, HyperbolicBlip2PreTrainedModel):
    """BLIP-2 retrieval model with the hyperbolic ITC head (Mandica et al. 2024).

    Args:
        config: :class:`HyperbolicBlip2Config`.
        base_model: an existing ``Blip2ForImageTextRetrieval``; built from ``config`` via :meth:`load_base` if
            ``None``.

    Attributes:
        base: the wrapped ``Blip2ForImageTextRetrieval``.
        head: :class:`HyperbolicITCHead` (scales, curvature, temperature).
    """

    base_attr = "base"

    def __init__(self, config: HyperbolicBlip2Config, base_model: Optional[Blip2ForImageTextRetrieval] = None):
        super().__init__(config)
        self.head = HyperbolicITCHead(config)
        # post_init before attaching the base: transformers' weight initialisation must never touch the
        # (pretrained) base weights.
        self.post_init()
        if base_model is None:
            base_model = self.load_base(config)
        if not isinstance(base_model, Blip2ForImageTextRetrieval):
            raise ValueError(f"base_model: expected a transformers Blip2ForImageTextRetrieval, got "
                             f"{type(base_model).__name__}")
        self.base = base_model
        if config.freeze_vision:
            self.base.vision_model.requires_grad_(False)

    # -- construction -------------------------------------------------------------------------------------
    @classmethod
    def load_base(cls, config: HyperbolicBlip2Config, dtype: Optional[torch.dtype] = None,
                  **kwargs) -> Blip2ForImageTextRetrieval:
        """Build/load the BLIP-2 base named by ``config`` (Hub id, directory, ``preset:<name>`` or nested config).

        Preset and nested-config bases are random: their query tokens are re-drawn from N(0, 0.02) with a fixed
        seed as LAVIS does (transformers initialises them to zeros, which makes all queries identical forever).
        """
        ref = config.base_model_name_or_path
        if ref is None:
            with torch.random.fork_rng():
                torch.manual_seed(0)
                base = Blip2ForImageTextRetrieval(config.blip2_config())
            base = base.to(dtype) if dtype is not None else base
            random_base = True
        else:
            base = load_reference_model(ref, Blip2ForImageTextRetrieval, revision=config.base_model_revision,
                                        dtype=dtype, **kwargs)
            random_base = ref.startswith("preset:")
        if random_base:
            gen = torch.Generator().manual_seed(0)
            std = base.config.qformer_config.initializer_range
            with torch.no_grad():
                base.query_tokens.copy_(torch.randn(base.query_tokens.shape, generator=gen) * std)
        return base.train(False)

    @classmethod
    def from_base(cls, base: str | os.PathLike | Blip2ForImageTextRetrieval, *, revision: Optional[str] = None,
                  dtype: Optional[torch.dtype] = None, **config_kwargs) -> "HyperbolicBlip2ForImageTextRetrieval":
        """Attach a fresh hyperbolic head to a BLIP-2 retrieval model.

        Args:
            base: Hub id (``"Salesforce/blip2-itm-vit-g"``), local directory, ``"preset:tiny-blip2-retrieval"``,
                or a loaded ``Blip2ForImageTextRetrieval`` (its ``name_or_path`` is recorded; a model without one
                is recorded by its nested config, so reload such checkpoints with
                ``from_pretrained(dir, base_model=...)`` to get its frozen weights back).
            revision: Hub revision of ``base``.
            dtype: dtype of the base.
            **config_kwargs: :class:`HyperbolicBlip2Config` fields, e.g. ``curvature=1.0``, ``rqs_p=0.5``.

        Returns:
            The model in eval mode.
        """
        if isinstance(base, Blip2ForImageTextRetrieval):
            base_model = base
            ref = getattr(base.config, "_name_or_path", "") or None
        else:
            base_model = None
            ref = str(base)
        bcfg = None
        if base_model is None:
            config = HyperbolicBlip2Config(base_model_name_or_path=ref, base_model_revision=revision, **config_kwargs)
            base_model = cls.load_base(config, dtype=dtype)
        if ref is None:
            bcfg = base_model.config.to_dict()
        config = HyperbolicBlip2Config(
            base_model_name_or_path=ref, base_model_revision=revision, base_config=bcfg,
            embed_dim=base_model.config.image_text_hidden_size, num_query_tokens=base_model.config.num_query_tokens,
            **config_kwargs)
        return cls(config, base_model=base_model).eval()

    # -- checkpoints --------------------------------------------------------------------------------------
    def head_state_dict(self) -> dict[str, torch.Tensor]:
        """Head tensors plus the base modules listed in ``config.trained_base_modules`` (stage-1 trainables)."""
        modules = [f"{self.base_attr}.{m}" for m in self.config.trained_base_modules]
        prefixes = ("head.",) + tuple(m + "." for m in modules)
        exact = set(modules)  # parameters held directly by the base, e.g. base.query_tokens
        return {k: v for k, v in self.state_dict().items() if k.startswith(prefixes) or k in exact}

    def save_pretrained(self, save_directory: str | os.PathLike, *, push_to_hub: bool = False, **kwargs) -> None:
        """Write ``config.json``, ``model.safetensors`` (head + trained base modules) and ``README.md``.

        A ``state_dict`` keyword (as ``Trainer`` passes) is filtered to the same keys; pickle is never used.
        """
        os.makedirs(save_directory, exist_ok=True)
        keys = set(self.head_state_dict())
        state = kwargs.get("state_dict")
        state = {k: v for k, v in state.items() if k in keys} if state is not None else self.head_state_dict()
        self.config.save_pretrained(save_directory)
        save_safetensors(state, Path(save_directory) / WEIGHTS_NAME)
        self.model_card().save(str(Path(save_directory) / "README.md"))
        if push_to_hub:
            self.push_to_hub(kwargs.get("repo_id") or Path(save_directory).name, token=kwargs.get("token"))

    def model_card(self):
        """Model card: what the checkpoint contains, how to load it, and the paper."""
        cfg = self.config
        usage = (
            "import vlplugins\n"
            "from vlplugins.hyperbolic_blip2 import HyperbolicBlip2ForImageTextRetrieval\n"
            "model = HyperbolicBlip2ForImageTextRetrieval.from_pretrained(\"<this repo>\")\n"
            "out = model(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask)\n"
            "out.logits_per_image, out.image_radius, out.text_radius\n"
            "model.uncertainty(pixel_values=pixel_values)  # small radius = uncertain / ambiguous image"
        )
        summary = (
            "Hyperbolic BLIP-2 retrieval head (Mandica et al., 2024): Q-Former query and text embeddings are mapped "
            f"onto the Poincaré ball (c={cfg.curvature}{', learnable' if cfg.learn_curvature else ''}) after a "
            f"learnable scale <= 1; ITC loss `{cfg.loss_type}` over the best query with Random Query Selection "
            f"(p={cfg.rqs_p}) and Random Text Pruning (max span {cfg.rtp_max_span}); ITM "
            f"{'on' if cfg.use_itm else 'off'}. The checkpoint holds the head and the trained base modules "
            f"{cfg.trained_base_modules}; the frozen rest is loaded from the base model. With the cosine loss the "
            "similarities equal the Euclidean BLIP-2 ones (exp_0 is a radial rescaling): the radius is the "
            "hyperbolic readout (uncertainty)."
        )
        return build_model_card(title="Hyperbolic BLIP-2 (image-text retrieval)", summary=summary, usage=usage,
                                tags=["hyperbolic", "blip-2", "image-text-retrieval", "poincare-ball"],
                                base_model=cfg.base_model_name_or_path, paper_url=PAPER_URL)

    # -- encoders -------------------------------------------------------------------------------------------
    def _vision_states(self, pixel_values: torch.Tensor) -> torch.Tensor:
        vision_dtype = self.base.vision_model.embeddings.patch_embedding.weight.dtype
        return self.base.vision_model(pixel_values=pixel_values.to(vision_dtype), return_dict=True).last_hidden_state

    def _query_features(self, vision_states: torch.Tensor) -> torch.Tensor:
        base = self.base
        attn = torch.ones(vision_states.shape[:-1], dtype=torch.long, device=vision_states.device)
        query_tokens = base.query_tokens.expand(vision_states.shape[0], -1, -1)
        out = base.qformer(query_embeds=query_tokens, encoder_hidden_states=vision_states,
                           encoder_attention_mask=attn, return_dict=True).last_hidden_state
        out = out.to(base.vision_projection.weight.dtype)
        return base.vision_projection(out)  # (B, Q, D) e_j, unnormalised

    def _text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        base = self.base
        embeds = base.embeddings(input_ids=input_ids)
        out = base.qformer(query_embeds=embeds, query_length=0, attention_mask=attention_mask,
                           return_dict=True).last_hidden_state
        out = out.to(base.text_projection.weight.dtype)
        return base.text_projection(out[:, 0, :])  # (B, D) u, unnormalised [CLS] projection

    def encode_image(self, pixel_values: torch.Tensor) -> BallEmbedding:
        """Ball embeddings of every query: ``points/tangent (B, Q, D)``, ``radius/ball_norm (B, Q)``."""
        check_pixel_values(pixel_values)
        return self.head.embed(self._query_features(self._vision_states(pixel_values)), "image")

    def encode_text(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> BallEmbedding:
        """Ball embeddings of captions: ``points/tangent (B, D)``, ``radius/ball_norm (B,)``."""
        attention_mask = self._check_text(input_ids, attention_mask)
        return self.head.embed(self._text_features(input_ids, attention_mask), "text")

    def _check_text(self, input_ids, attention_mask):
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
            shape = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
            raise ValueError(f"input_ids: expected a (batch, seq) tensor, got {shape}")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask: expected shape {tuple(input_ids.shape)} (as input_ids), got "
                             f"{tuple(attention_mask.shape)}")
        check_captions(input_ids, attention_mask, self.config.special_token_ids)
        return attention_mask

    @torch.no_grad()
    def uncertainty(self, pixel_values: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """Per-image hyperbolic radius: small radius = uncertain / ambiguous image (close to the origin).

        Args:
            pixel_values: ``(B, 3, H, W)``.
            reduction: ``"mean"`` or ``"max"`` over queries -> ``(B,)``; ``"none"`` -> ``(B, Q)``.
        """
        if reduction not in ("mean", "max", "none"):
            raise ValueError(f"reduction: expected 'mean', 'max' or 'none', got {reduction!r}")
        radius = self.encode_image(pixel_values).radius
        if reduction == "none":
            return radius
        return radius.mean(dim=1) if reduction == "mean" else radius.max(dim=1).values

    def itm_logits(self, vision_states: torch.Tensor, input_ids: torch.Tensor,
                   attention_mask: torch.Tensor) -> torch.Tensor:
        """BLIP-2 ITM logits of paired rows: ``vision_states (B, P, H)`` + captions ``(B, L)`` -> ``(B, 2)``."""
        base = self.base
        query_tokens = base.query_tokens.expand(vision_states.shape[0], -1, -1)
        q_mask = torch.ones(query_tokens.shape[:-1], dtype=attention_mask.dtype, device=attention_mask.device)
        embeds = base.embeddings(input_ids=input_ids, query_embeds=query_tokens)
        v_mask = torch.ones(vision_states.shape[:-1], dtype=torch.long, device=vision_states.device)
        out = base.qformer(query_embeds=embeds, query_length=query_tokens.shape[1],
                           attention_mask=torch.cat([q_mask, attention_mask], dim=1),
                           encoder_hidden_states=vision_states, encoder_attention_mask=v_mask,
                           return_dict=True).last_hidden_state
        out = out[:, : query_tokens.shape[1], :].to(base.itm_head.weight.dtype)
        return base.itm_head(out).mean(dim=1)

    # -- forward --------------------------------------------------------------------------------------------
    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: Optional[torch.Tensor] = None, return_loss: Optional[bool] = None,
                return_dict: Optional[bool] = None, **kwargs) -> HyperbolicBlip2Output:
        """Hyperbolic ITC (+ ITM) forward.

        Args:
            pixel_values: ``(num_images, 3, H, W)`` finite images.
            input_ids: ``(num_texts, seq)`` captions ([CLS] ... [SEP] with padding); each needs >= 1 content token.
            attention_mask: ``(num_texts, seq)``.
            return_loss: compute ``loss`` (needs ``num_images == num_texts``; row i pairs image i with text i).

        Returns:
            :class:`HyperbolicBlip2Output`. Training mode applies RTP and RQS and samples ITM hard negatives; eval
            mode is deterministic (max over queries, no pruning, hardest ITM negative).
        """
        cfg = self.config
        check_pixel_values(pixel_values)
        attention_mask = self._check_text(input_ids, attention_mask)
        if return_loss and pixel_values.shape[0] != input_ids.shape[0]:
            raise ValueError(f"input_ids: expected as many captions as images ({pixel_values.shape[0]}) to compute "
                             f"the paired losses, got {input_ids.shape[0]}")
        if self.training and cfg.rtp_max_span > 0:
            input_ids, attention_mask = random_text_pruning(input_ids, attention_mask, cfg.rtp_max_span,
                                                            special_token_ids=cfg.special_token_ids,
                                                            pad_token_id=cfg.text_pad_token_id)
        vision_states = self._vision_states(pixel_values)
        img = self.head.embed(self._query_features(vision_states), "image")
        txt = self.head.embed(self._text_features(input_ids, attention_mask), "text")

        sim_q2t = self.head.query_text_similarity(img.points, txt.points)  # (I, Q, T) float32
        scores, query_index = self.head.select_queries(sim_q2t, training=self.training)
        temp = self.head.temperature()
        logits_per_image = scores / temp
        logits_per_text = logits_per_image.t()

        num_images = pixel_values.shape[0]
        rows = torch.arange(num_images, device=scores.device)
        if num_images == input_ids.shape[0]:
            sel = query_index[rows, rows]
        else:
            sel = query_index[rows, scores.argmax(dim=1)]
        image_radius_selected = img.radius[rows, sel]

        loss = loss_itc = loss_itm = None
        if return_loss:
            loss_itc = itc_loss(logits_per_image, logits_per_text, cfg.label_smoothing)
            loss = loss_itc
            if cfg.use_itm and num_images > 1:
                # Hard negatives from the max-over-queries ITC similarity (not the RQS one), as BLIP-2 mines them.
                best = self.head.best_query(sim_q2t)[0].detach() / temp.detach()
                # training: sampled as BLIP-2; eval: the hardest negative, so eval losses are deterministic.
                neg_text, neg_image = sample_hard_negatives(best, best.t(), deterministic=not self.training)
                ids_all = torch.cat([input_ids, input_ids, input_ids[neg_text]], dim=0)
                mask_all = torch.cat([attention_mask, attention_mask, attention_mask[neg_text]], dim=0)
                vis_all = torch.cat([vision_states, vision_states[neg_image], vision_states], dim=0)
                loss_itm = itm_loss(self.itm_logits(vis_all, ids_all, mask_all), num_images)
                loss = loss_itc + cfg.itm_weight * loss_itm
        return HyperbolicBlip2Output(
            loss=loss, loss_itc=loss_itc, loss_itm=loss_itm,
            logits_per_image=logits_per_image, logits_per_text=logits_per_text,
            image_embeds=img.points, text_embeds=txt.points,
            image_radius=img.radius, image_radius_selected=image_radius_selected, text_radius=txt.radius,
            image_ball_norm=img.ball_norm, text_ball_norm=txt.ball_norm,
            query_index=query_index, similarity=scores,
        )
