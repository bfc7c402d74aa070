"""HyperAlign: CLIP + gated adapters + Lorentz entailment cones + adaptive modulation (arXiv 2601.04614).

Pipeline per (image I, prompt T) pair, shapes for a batch of B pairs and CLIP embedding size D:

1. frozen CLIP towers -> ``x_I, x_T``: (B, D);
2. gated residual adapters ``f = x + sigmoid(w_g) * MLP(x)`` -> ``f_I, f_T``: (B, D);
3. ``s_base = cos(f_I, f_T)``: (B,);
4. feature scale ``alpha = sigmoid(alpha_0) * alpha_max`` per modality, Lorentz ``exp_map0`` (space components,
   MERU convention) -> ``f'_I, f'_T``: (B, D);
5. primitives ``d_L = d(f'_T, f'_I)``, ``phi = oxy_angle(f'_T, f'_I)`` (text is the cone apex),
   ``delta = half_aperture(f'_T)``: (B,) each;
6. regressor ``M(standardise([d_L, phi, delta])) -> (a, b, g)`` and ``score = g * (a * s_base + b)``: (B,).

``M``'s last layer starts at zero and ``a``/``g`` are normalised softplus outputs, so an untrained model scores
exactly the cosine (``a = g = 1``, ``b = 0`` bit for bit).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from ..geometry import clamped_curvature, lorentz
from ..hub.checkpoint import HeadOnlyMixin, load_reference_model
from .configuration import HyperAlignConfig
from .losses import entailment_loss, regression_loss
from .processing import check_prompts, logit, preprocess_images, split_images, tokenize

PAPER_URL = "https://arxiv.org/abs/2601.04614"
# Backbone reference resolved to vlplugins.data.pretrain.pretrained_tiny_clip() (deterministic, cached).
PRETRAINED_TINY_CLIP = "vlplugins:pretrained-tiny-clip"
PRESET_PREFIX = "preset:"
# Serialises score() calls from reward functions run in a thread pool (trl's async_reward_computation): score()
# toggles train/eval mode. Module-level rather than an attribute so models stay deep-copyable.
_SCORE_LOCK = threading.Lock()


@dataclass
class HyperAlignOutput(ModelOutput):
    """Output of :class:`HyperAlignModel`.

    Args:
        loss: ``L_reg + lambda_ent * L_ent`` (when ``labels`` are given).
        loss_reg: MSE between ``scores`` and the normalised MOS.
        loss_ent: dynamic entailment loss.
        scores: ``(batch,)`` alignment scores ``g * (a * cosine + b)``.
        cosine: ``(batch,)`` ``s_base = cos(f_I, f_T)`` on the adapter outputs.
        d_L: ``(batch,)`` Lorentz geodesic distance between text and image points.
        phi: ``(batch,)`` exterior angle at the text point (radians).
        delta: ``(batch,)`` half aperture of the text cone (radians).
        a: ``(batch,)`` modulation slope (> 0).
        b: ``(batch,)`` modulation offset.
        g: ``(batch,)`` modulation gain (> 0).
    """

    loss: Optional[torch.Tensor] = None
    loss_reg: Optional[torch.Tensor] = None
    loss_ent: Optional[torch.Tensor] = None
    scores: Optional[torch.Tensor] = None
    cosine: Optional[torch.Tensor] = None
    d_L: Optional[torch.Tensor] = None
    phi: Optional[torch.Tensor] = None
    delta: Optional[torch.Tensor] = None
    a: Optional[torch.Tensor] = None
    b: Optional[torch.Tensor] = None
    g: Optional[torch.Tensor] = None


class GatedAdapter(nn.Module):
    """Gated residual bottleneck adapter ``f = x + sigmoid(w_g) * W2 act(W1 x)``.

    Args:
        dim: feature size ``D``.
        reduction: bottleneck ratio ``r`` (hidden ``max(1, D // r)``).
        gate_init: initial gate logit ``w_g`` (negative: starts near the identity).
    """

    def __init__(self, dim: int, reduction: int = 4, gate_init: float = -4.0):
        super().__init__()
        hidden = max(1, dim // reduction)
        self.down = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.up = nn.Linear(hidden, dim)
        self.gate = nn.Parameter(torch.tensor(float(gate_init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (batch, D) -> (batch, D)."""
        return x + torch.sigmoid(self.gate) * self.up(self.act(self.down(x)))


class RunningStandardizer(nn.Module):
    """Standardise the hyperbolic primitives ``Z = [d_L, phi, delta]`` feature-wise.

    ``d_L`` (unbounded) and the angles (radians) live on different scales; like BatchNorm without affine, training
    batches use their own statistics and update running ones used at evaluation. The first training batch
    initialises the running statistics outright, so a briefly trained model does not evaluate with stale (0, 1)
    statistics; a training batch of one sample uses the running statistics.

    Args:
        num_features: 3.
        momentum: running-average momentum.
        eps: variance floor.
    """

    def __init__(self, num_features: int = 3, momentum: float = 0.1, eps: float = 1e-5):
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.zeros((), dtype=torch.long))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """``z``: (batch, F) -> (batch, F)."""
        if self.training and z.shape[0] > 1:
            mean = z.mean(0)
            var = z.var(0, unbiased=False)
            with torch.no_grad():
                first = self.num_batches_tracked == 0
                m = torch.where(first, torch.ones_like(mean), torch.full_like(mean, self.momentum))
                self.running_mean.mul_(1 - m).add_(m * mean.detach().to(self.running_mean.dtype))
                self.running_var.mul_(1 - m).add_(m * var.detach().to(self.running_var.dtype))
                self.num_batches_tracked.add_(1)
        else:
            mean, var = self.running_mean.to(z.dtype), self.running_var.to(z.dtype)
        return (z - mean) / torch.sqrt(var + self.eps)


class ModulationRegressor(nn.Module):
    """Adaptive modulation regressor ``M: [d_L, phi, delta] -> (a, b, g)``.

    ``a = softplus(u_a) / softplus(0)`` and ``g = softplus(u_g) / softplus(0)`` are positive (the calibration stays
    monotone in the cosine); ``b = u_b``. The last layer is zero-initialised, so ``u = 0`` and ``a = g = 1``,
    ``b = 0`` exactly at initialisation (dividing by ``softplus(0)`` makes the 1 exact in floating point).

    Args:
        hidden: hidden widths (default ``(64, 64)``).
        momentum: momentum of the input standardiser.
    """

    def __init__(self, hidden: Sequence[int] = (64, 64), momentum: float = 0.1):
        super().__init__()
        self.standardize = RunningStandardizer(3, momentum=momentum)
        layers: list[nn.Module] = []
        width = 3
        for h in hidden:
            layers += [nn.Linear(width, h), nn.GELU()]
            width = h
        self.mlp = nn.Sequential(*layers)
        self.out = nn.Linear(width, 3)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``z``: (batch, 3) raw primitives -> ``a, b, g``: (batch,) each."""
        u = self.out(self.mlp(self.standardize(z)))
        unit = F.softplus(torch.zeros((), dtype=u.dtype, device=u.device))
        return F.softplus(u[:, 0]) / unit, u[:, 1], F.softplus(u[:, 2]) / unit


class HyperAlignModel(HeadOnlyMixin, PreTrainedModel):
    """HyperAlign alignment scorer on a frozen CLIP (transformers ``CLIPModel`` or ``open_clip.CLIP``).

    Only the head (adapters, ``alpha_0`` per modality, curvature, regressor) is trainable and saved; the
    checkpoint names the backbone by ``config.backbone_id``.

    Example::

        model = HyperAlignModel.from_clip("openai/clip-vit-base-patch16")
        scores = model.score(images, prompts)          # (N,) float tensor
        reward_fn = model.as_reward_fn()                 # trl DDPO: reward_fn(images, prompts, metadata)
    """

    config_class = HyperAlignConfig
    base_model_prefix = "hyperalign"
    base_attr = "clip"
    main_input_name = "pixel_values"
    _no_split_modules: list = []
    supports_gradient_checkpointing = False

    def __init__(self, config: HyperAlignConfig, base_model: Optional[nn.Module] = None):
        super().__init__(config)
        if base_model is None:
            base_model = self.load_base(config)
        self.clip = base_model
        self.clip.requires_grad_(False)
        self.clip.eval()
        dim, size = _backbone_dims(config.backbone, base_model)
        for name, value in (("embed_dim", dim), ("image_size", size)):
            held = getattr(config, name)
            if held is not None and int(held) != value:
                raise ValueError(f"config.{name}: the checkpoint expects {held}, the backbone has {value}")
            setattr(config, name, value)
        self.adapter_image = GatedAdapter(dim, config.adapter_reduction, config.adapter_gate_init)
        self.adapter_text = GatedAdapter(dim, config.adapter_reduction, config.adapter_gate_init)
        # alpha = sigmoid(alpha_0) * alpha_max; default init MERU's D^-1/2 (unit-norm features at start).
        alpha = config.alpha_init if config.alpha_init is not None else min(dim ** -0.5, 0.5 * config.alpha_max)
        a0 = logit(alpha / config.alpha_max)
        self.alpha0_image = nn.Parameter(torch.tensor(a0))
        self.alpha0_text = nn.Parameter(torch.tensor(a0))
        # log-curvature (MERU); clamped to [c0/10, 10 c0] in curvature(); frozen unless learn_curv.
        self.log_curv = nn.Parameter(torch.tensor(math.log(config.curv_init)), requires_grad=config.learn_curv)
        self.regressor = ModulationRegressor(config.regressor_hidden, momentum=config.stats_momentum)
        self.post_init()

    # ------------------------------------------------------------------ construction
    def _init_weights(self, module):
        # The head is initialised in __init__ (zero last layer = identity calibration) and the backbone is
        # pretrained: transformers' generic re-initialisation must touch neither.
        return

    @classmethod
    def load_base(cls, config: HyperAlignConfig, dtype: Optional[torch.dtype] = None) -> nn.Module:
        """Build the frozen CLIP named by ``config.backbone`` / ``config.backbone_id`` (eval mode)."""
        ref = config.backbone_id
        if config.backbone == "transformers":
            from transformers import CLIPModel

            if ref == PRETRAINED_TINY_CLIP:
                from ..data.pretrain import pretrained_tiny_clip

                model = pretrained_tiny_clip()
                model = model.to(dtype) if dtype is not None else model
            else:
                model = load_reference_model(ref, CLIPModel, revision=config.backbone_revision, dtype=dtype)
            if not isinstance(model, CLIPModel):
                raise ValueError(f"backbone_id: {ref!r} is a {type(model).__name__}, expected a transformers CLIPModel")
            return model.eval()
        import open_clip

        if ref.startswith(PRESET_PREFIX):
            from ..hub.presets import build_from_preset

            model = build_from_preset(ref[len(PRESET_PREFIX):])
            if config.open_clip_pretrained:
                open_clip.load_checkpoint(model, config.open_clip_pretrained)
        else:
            model = open_clip.create_model(ref, pretrained=config.open_clip_pretrained)
        if not isinstance(model, open_clip.CLIP) and not hasattr(model, "encode_text"):
            raise ValueError(f"backbone_id: {ref!r} is a {type(model).__name__}, expected an open_clip CLIP")
        if dtype is not None:
            model = model.to(dtype)
        return model.eval()

    @classmethod
    def from_clip(cls, id_or_dir_or_preset: str, *, revision: Optional[str] = None,
                  dtype: Optional[torch.dtype] = None, base_model: Optional[nn.Module] = None,
                  **config_kwargs) -> "HyperAlignModel":
        """New (untrained) HyperAlign on a transformers CLIP.

        Args:
            id_or_dir_or_preset: Hub id, local directory, ``"preset:<name>"`` or ``"vlplugins:pretrained-tiny-clip"``.
            revision: Hub revision.
            dtype: backbone dtype (the head stays float32).
            base_model: an already loaded ``CLIPModel`` to use (``id_or_dir_or_preset`` is still recorded).
            **config_kwargs: further :class:`HyperAlignConfig` fields.
        """
        config = HyperAlignConfig(backbone="transformers", backbone_id=id_or_dir_or_preset,
                                  backbone_revision=revision, **config_kwargs)
        if base_model is None:
            base_model = cls.load_base(config, dtype=dtype)
        return cls(config, base_model=base_model)

    @classmethod
    def from_open_clip(cls, name: str, pretrained: Optional[str] = None, *, dtype: Optional[torch.dtype] = None,
                       base_model: Optional[nn.Module] = None, **config_kwargs) -> "HyperAlignModel":
        """New (untrained) HyperAlign on an open_clip CLIP.

        Args:
            name: open_clip model name (``"ViT-B-16"``) or ``"preset:<name>"`` (e.g. ``"preset:tiny-open-clip"``).
            pretrained: open_clip pretrained tag or a local checkpoint file (``None``: random weights).
            dtype: backbone dtype.
            base_model: an already built open_clip model to use.
            **config_kwargs: further :class:`HyperAlignConfig` fields.
        """
        config = HyperAlignConfig(backbone="open_clip", backbone_id=name, open_clip_pretrained=pretrained,
                                  **config_kwargs)
        if base_model is None:
            base_model = cls.load_base(config, dtype=dtype)
        return cls(config, base_model=base_model)

    def train(self, mode: bool = True):
        """Train mode for the head; the frozen backbone always stays in eval mode."""
        super().train(mode)
        self.clip.eval()
        return self

    # ------------------------------------------------------------------ backbone
    def _backbone_grad(self) -> bool:
        return torch.is_grad_enabled() and any(p.requires_grad for p in self.clip.parameters())

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """CLIP image embeddings. ``pixel_values``: (B, 3, S, S) normalised -> (B, D)."""
        with torch.set_grad_enabled(self._backbone_grad()):
            pixel_values = pixel_values.to(self._backbone_dtype())
            if self.config.backbone == "transformers":
                return _pooled(self.clip.get_image_features(pixel_values=pixel_values))
            return self.clip.encode_image(pixel_values)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """CLIP text embeddings. ``input_ids``/``attention_mask``: (B, L) -> (B, D)."""
        with torch.set_grad_enabled(self._backbone_grad()):
            if self.config.backbone == "transformers":
                return _pooled(self.clip.get_text_features(input_ids=input_ids, attention_mask=attention_mask))
            return self.clip.encode_text(input_ids)

    def _backbone_dtype(self) -> torch.dtype:
        return next(self.clip.parameters()).dtype

    # ------------------------------------------------------------------ head
    def feature_scales(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(alpha_image, alpha_text)`` with ``alpha = sigmoid(alpha_0) * alpha_max`` (scalars)."""
        amax = self.config.alpha_max
        return torch.sigmoid(self.alpha0_image) * amax, torch.sigmoid(self.alpha0_text) * amax

    def curvature(self) -> torch.Tensor:
        """Curvature magnitude ``c`` (scalar), clamped MERU-style to ``[c0 / 10, 10 c0]``."""
        return clamped_curvature(self.log_curv, self.config.curv_init)

    def head(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor,
             labels: Optional[torch.Tensor] = None) -> HyperAlignOutput:
        """Adapters, geometry, regressor and losses on CLIP embeddings.

        Args:
            image_embeds: (B, D) CLIP image embeddings (unnormalised).
            text_embeds: (B, D) CLIP text embeddings.
            labels: (B,) MOS normalised to ``[0, 1]`` (optional).
        """
        dtype = self.adapter_image.down.weight.dtype
        # The head is tiny; it runs in its own dtype (float32 by default) with autocast off, so the calibration and
        # the geometry inputs are not rounded to fp16 (lorentz.* additionally computes in float32).
        with torch.autocast(device_type=image_embeds.device.type, enabled=False):
            f_img = self.adapter_image(image_embeds.to(dtype))
            f_txt = self.adapter_text(text_embeds.to(dtype))
            cosine = F.cosine_similarity(f_img, f_txt, dim=-1, eps=1e-8)
            alpha_img, alpha_txt = self.feature_scales()
            c = self.curvature()
            x_img = lorentz.exp_map0(alpha_img * f_img, c)
            x_txt = lorentz.exp_map0(alpha_txt * f_txt, c)
            d_l = lorentz.dist(x_txt, x_img, c)
            phi = lorentz.oxy_angle(x_txt, x_img, c)  # text is the apex (parent), image the child
            delta = lorentz.half_aperture(x_txt, c, min_radius=self.config.min_radius)
            # cast: a head loaded in fp16/bf16 keeps alpha_0 / log c in fp32, so the primitives come out fp32
            z = torch.stack([d_l, phi, delta], dim=-1).to(self.regressor.out.weight.dtype)
            a, b, g = self.regressor(z)
            scores = g * (a * cosine + b)
            loss = loss_reg = loss_ent = None
            if labels is not None:
                labels = labels.to(scores.dtype)
                loss_reg = regression_loss(scores, labels)
                loss_ent = entailment_loss(phi, delta, labels, self.config.entail_mode, self.config.cone_alpha,
                                           self.config.aperture_eps)
                loss = loss_reg + self.config.lambda_ent * loss_ent
        return HyperAlignOutput(loss=loss, loss_reg=loss_reg, loss_ent=loss_ent, scores=scores, cosine=cosine,
                                d_L=d_l, phi=phi, delta=delta, a=a, b=b, g=g)

    def forward(self, pixel_values: Optional[torch.Tensor] = None, input_ids: Optional[torch.Tensor] = None,
                attention_mask: Optional[torch.Tensor] = None, labels: Optional[torch.Tensor] = None,
                image_embeds: Optional[torch.Tensor] = None, text_embeds: Optional[torch.Tensor] = None,
                return_dict: Optional[bool] = None, **kwargs) -> HyperAlignOutput:
        """Score image/prompt pairs (and compute the losses when ``labels`` are given).

        Args:
            pixel_values: (B, 3, S, S) normalised images (or pass ``image_embeds``).
            input_ids: (B, L) CLIP token ids (or pass ``text_embeds``).
            attention_mask: (B, L).
            labels: (B,) MOS normalised to ``[0, 1]``.
            image_embeds: (B, D) precomputed CLIP image embeddings (skips the vision tower).
            text_embeds: (B, D) precomputed CLIP text embeddings (skips the text tower).

        Returns:
            :class:`HyperAlignOutput`.
        """
        if image_embeds is None:
            if pixel_values is None:
                raise ValueError("pixel_values: expected a (B, 3, S, S) tensor (or image_embeds), got None")
            if pixel_values.dim() != 4 or pixel_values.shape[1] != 3:
                raise ValueError(f"pixel_values: expected shape (B, 3, S, S), got {tuple(pixel_values.shape)}")
            image_embeds = self.encode_image(pixel_values)
        if text_embeds is None:
            if input_ids is None:
                raise ValueError("input_ids: expected a (B, L) tensor (or text_embeds), got None")
            text_embeds = self.encode_text(input_ids, attention_mask)
        if image_embeds.shape[0] != text_embeds.shape[0]:
            raise ValueError(f"images/prompts: expected the same batch size, got {image_embeds.shape[0]} images and "
                             f"{text_embeds.shape[0]} prompts")
        if labels is not None:
            if labels.shape != (image_embeds.shape[0],):
                raise ValueError(f"labels: expected shape ({image_embeds.shape[0]},), got {tuple(labels.shape)}")
            lo, hi = float(labels.min()), float(labels.max())
            if not (0.0 <= lo and hi <= 1.0):
                raise ValueError(f"labels: expected MOS normalised to [0, 1], got values in [{lo:.4g}, {hi:.4g}]")
        return self.head(image_embeds, text_embeds, labels)

    # ------------------------------------------------------------------ reward API
    def prepare_inputs(self, images: Any, prompts: Sequence[str], offset: int = 0) -> dict[str, torch.Tensor]:
        """Validate and convert raw inputs into ``pixel_values``, ``input_ids`` and ``attention_mask`` on the model's
        device (``offset``: index of the first item, for error messages)."""
        cfg = self.config
        pixel_values = preprocess_images(images, cfg.image_size, cfg.image_mean, cfg.image_std, self.device,
                                         offset=offset)
        text = tokenize(prompts, self._context_length(), pad_to_max=cfg.backbone == "open_clip")
        return {"pixel_values": pixel_values, **{k: v.to(self.device) for k, v in text.items()}}

    def _context_length(self) -> int:
        if self.config.backbone == "open_clip":
            return min(self.config.max_text_length, int(getattr(self.clip, "context_length", 77)))
        return min(self.config.max_text_length, int(self.clip.config.text_config.max_position_embeddings))

    def score(self, images: Any, prompts: Sequence[str], batch_size: int = 32, *, autocast: bool = True,
              return_details: bool = False):
        """Alignment scores of ``N`` image/prompt pairs, batched internally, under ``no_grad`` and autocast.

        Args:
            images: ``N`` PIL images, ``(H, W, 3)`` arrays, ``(3, H, W)`` tensors or file paths, or one batched
                ``(N, 3, H, W)`` tensor / ``(N, H, W, 3)`` array. Float pixels are in ``[0, 1]``, uint8 in
                ``[0, 255]``. Images are resized (shorter side) and center-cropped to the backbone resolution.
            prompts: ``N`` non-empty strings.
            batch_size: pairs per forward pass.
            autocast: use fp16 autocast on CUDA for the backbone (the head always runs in its own dtype).
            return_details: also return the diagnostics.

        Returns:
            ``(N,)`` float32 CPU tensor of scores; with ``return_details`` a dict of ``(N,)`` tensors with keys
            ``scores, cosine, d_L, phi, delta, a, b, g``.

        Raises:
            ValueError: different numbers of images and prompts, empty prompts, unreadable files, NaN pixels
                (naming the item).
        """
        items = split_images(images)
        prompts = check_prompts(prompts)
        if len(items) != len(prompts):
            raise ValueError(f"images/prompts: expected the same number of images and prompts, got {len(items)} "
                             f"images and {len(prompts)} prompts")
        if len(items) == 0:
            raise ValueError("images: expected at least one image, got 0")
        if batch_size < 1:
            raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
        keys = ("scores", "cosine", "d_L", "phi", "delta", "a", "b", "g")
        parts: dict[str, list] = {k: [] for k in keys}
        device = self.device
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad(), torch.autocast(device_type=device.type, dtype=torch.float16,
                                                 enabled=autocast and device.type == "cuda"):
                for start in range(0, len(items), batch_size):
                    inputs = self.prepare_inputs(items[start:start + batch_size], prompts[start:start + batch_size],
                                                 offset=start)
                    out = self.forward(**inputs)
                    for k in keys:
                        parts[k].append(getattr(out, k).float())
        finally:
            self.train(was_training)
        result = {k: torch.cat(v).cpu() for k, v in parts.items()}
        return result if return_details else result["scores"]

    def as_reward_fn(self, batch_size: int = 32, diagnostics: bool = True):
        """Reward function with trl's DDPO signature: ``reward_fn(images, prompts, prompt_metadata)``.

        ``images`` is what the DDPO pipeline decodes (a float ``(N, 3, H, W)`` tensor in ``[0, 1]``, possibly on
        the GPU) or any input :meth:`score` accepts; ``prompts`` a tuple of ``N`` strings; ``prompt_metadata`` a
        tuple of ``N`` dicts (unused). Returns ``(rewards, reward_metadata)``: ``rewards`` an ``(N,)`` float32
        tensor (trl applies ``torch.as_tensor``), ``reward_metadata`` a dict with per-sample lists ``cosine``,
        ``d_L``, ``phi``, ``delta`` (empty when ``diagnostics=False``). Thread-safe (trl may call it from a
        thread pool with ``async_reward_computation``).
        """

        def reward_fn(images, prompts, prompt_metadata=None):
            if prompt_metadata is not None and len(prompt_metadata) != len(prompts):
                raise ValueError(f"prompt_metadata: expected {len(prompts)} entries, got {len(prompt_metadata)}")
            with _SCORE_LOCK:
                details = self.score(images, list(prompts), batch_size=batch_size, return_details=True)
            meta = {k: details[k].tolist() for k in ("cosine", "d_L", "phi", "delta")} if diagnostics else {}
            return details["scores"], meta

        return reward_fn

    # ------------------------------------------------------------------ hub
    def model_card(self):
        """Model card with usage, the backbone reference and the evaluation table (``config.eval_table``)."""
        from ..hub.cards import build_model_card, markdown_table

        cfg = self.config
        table = None
        if cfg.eval_table:
            table = markdown_table(["metric", "value"], [[str(r[0]), float(r[1])] for r in cfg.eval_table])
        usage = (
            "from vlplugins.hyperalign import HyperAlignModel\n\n"
            "model = HyperAlignModel.from_pretrained(\"<this repo or directory>\")\n"
            "scores = model.score(images, prompts)   # (N,) alignment scores\n"
            "reward_fn = model.as_reward_fn()         # trl DDPO reward function"
        )
        summary = (
            f"HyperAlign text-to-image alignment scorer (gated adapters, Lorentz entailment cones, adaptive "
            f"modulation) on a frozen {cfg.backbone} CLIP `{cfg.backbone_id}`"
            + (f" (open_clip weights `{cfg.open_clip_pretrained}`)" if cfg.open_clip_pretrained else "")
            + f". Only the head is stored here; the backbone is rebuilt from its reference. Entailment mode "
            f"`{cfg.entail_mode}`, cone factor {cfg.cone_alpha}, lambda_ent {cfg.lambda_ent}, curvature "
            f"{'learned' if cfg.learn_curv else 'fixed'} (c0 = {cfg.curv_init})."
        )
        base = cfg.backbone_id if cfg.backbone == "transformers" and "/" in cfg.backbone_id else None
        return build_model_card(title="HyperAlign alignment reward model", summary=summary, usage=usage,
                                tags=["text-to-image-alignment", "reward-model", "hyperbolic", "clip"],
                                base_model=base, paper_url=PAPER_URL, eval_table=table)


def _pooled(out) -> torch.Tensor:
    # transformers 5 returns a BaseModelOutputWithPooling whose pooler_output is the projected embedding.
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def _backbone_dims(backbone: str, model: nn.Module) -> tuple[int, int]:
    """(embed_dim, image_size) of a CLIP backbone."""
    if backbone == "transformers":
        cfg = model.config
        return int(cfg.projection_dim), int(cfg.vision_config.image_size)
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    dim = getattr(model.visual, "output_dim", None)
    if dim is None:
        dim = model.text_projection.shape[-1]
    return int(dim), int(size)


class CosineLinearBaseline(nn.Module):
    """Baseline of the learning check: the same gated adapters on the same frozen CLIP features, score
    ``w * cos(f_I, f_T) + b`` (no hyperbolic branch, no modulation regressor), MSE on the normalised MOS.

    Args:
        dim: CLIP embedding size.
        reduction: adapter bottleneck ratio.
        gate_init: adapter gate logit.
    """

    def __init__(self, dim: int, reduction: int = 4, gate_init: float = -4.0):
        super().__init__()
        self.adapter_image = GatedAdapter(dim, reduction, gate_init)
        self.adapter_text = GatedAdapter(dim, reduction, gate_init)
        self.w = nn.Parameter(torch.tensor(1.0))
        self.b = nn.Parameter(torch.tensor(0.0))

    def forward(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor,
                labels: Optional[torch.Tensor] = None) -> HyperAlignOutput:
        """``image_embeds``/``text_embeds``: (B, D); ``labels``: (B,) -> scores (B,) and the MSE loss."""
        cos = F.cosine_similarity(self.adapter_image(image_embeds), self.adapter_text(text_embeds), dim=-1)
        scores = self.w * cos + self.b
        loss = regression_loss(scores, labels) if labels is not None else None
        return HyperAlignOutput(loss=loss, loss_reg=loss, scores=scores, cosine=cos)
