"""Configuration of the HyperAlign text-to-image alignment reward model (arXiv 2601.04614)."""

from __future__ import annotations

import math
from typing import Optional, Sequence

from transformers import PreTrainedConfig

from ..data import CLIP_MEAN, CLIP_STD  # CLIP's image normalisation, shared with the tiny-CLIP fixture

BACKBONES = ("transformers", "open_clip")
ENTAIL_MODES = ("score_weighted", "scaled_aperture", "meru")


class HyperAlignConfig(PreTrainedConfig):
    r"""Configuration of :class:`~vlplugins.hyperalign.HyperAlignModel`.

    HyperAlign scores a (generated image, prompt) pair: frozen CLIP towers -> one gated residual adapter per
    modality -> Euclidean cosine ``s_base`` and, after the feature scale ``alpha = sigmoid(alpha_0) * alpha_max`` and
    the Lorentz exponential map at the origin, the hyperbolic primitives ``d_L`` (geodesic distance), ``phi``
    (exterior angle at the text point, text = cone apex) and ``delta`` (half aperture of the text cone). A small
    regressor maps them to ``(a, b, g)`` and the score is ``g * (a * s_base + b)``.

    Args:
        backbone: ``"transformers"`` (a ``CLIPModel``) or ``"open_clip"`` (an ``open_clip.CLIP``).
        backbone_id: where the frozen backbone comes from. transformers: a Hub id
            (``"openai/clip-vit-base-patch16"``), a local ``save_pretrained`` directory, ``"preset:<name>"``
            (random weights from ``hub_configs/``) or ``"vlplugins:pretrained-tiny-clip"`` (the shapes-world
            pretrained tiny CLIP, deterministic and cached). open_clip: a model name (``"ViT-B-16"``) or
            ``"preset:<name>"``.
        backbone_revision: Hub revision of ``backbone_id`` (transformers backbones).
        open_clip_pretrained: open_clip pretrained tag (``"openai"``) or a local checkpoint file; ``None`` = random.
        embed_dim: CLIP joint embedding size; filled in from the backbone when the model is built.
        image_size: input resolution of the vision tower; filled in from the backbone.
        image_mean: per-channel normalisation mean used by :meth:`HyperAlignModel.score`.
        image_std: per-channel normalisation std.
        max_text_length: token limit (CLIP context length, 77).
        adapter_reduction: bottleneck ratio ``r`` of the gated adapters (hidden size ``embed_dim // r``).
        adapter_gate_init: initial gate logit ``w_g``; the adapter adds ``sigmoid(w_g) * MLP(x)``, so a negative
            value starts it close to the identity.
        alpha_max: ``alpha_max`` in ``alpha = sigmoid(alpha_0) * alpha_max`` (1.0: the scale can only shrink norms).
        alpha_init: initial ``alpha`` (the scale, not the logit), per modality. ``None`` uses MERU's
            ``embed_dim ** -0.5`` so that CLIP features of norm ~sqrt(D) start with unit norm.
        curv_init: curvature magnitude ``c`` (space has curvature ``-c``).
        learn_curv: learn ``log c`` (clamped MERU-style to ``[curv_init / 10, curv_init * 10]``).
        min_radius: ``k`` of the half aperture ``asin(2k / (sqrt(c) |x|))`` (MERU's 0.1).
        cone_alpha: cone factor applied to the aperture in the dynamic entailment loss (0.8).
        lambda_ent: weight of the entailment loss in ``L = L_reg + lambda_ent * L_ent``.
        entail_mode: how the ground-truth score modulates the cone (our reading of the paper, see the spec):
            ``"score_weighted"`` (default) ``mean(s * relu(phi - cone_alpha * delta))``;
            ``"scaled_aperture"`` ``mean(relu(phi - cone_alpha * delta * (1 - s + aperture_eps)))``;
            ``"meru"`` the plain MERU hinge ``mean(relu(phi - delta))``.
        aperture_eps: ``eps_g`` of ``"scaled_aperture"`` (keeps the cone open for perfectly aligned pairs).
        regressor_hidden: hidden widths of the modulation regressor ``M: R^3 -> R^3``.
        stats_momentum: momentum of the running mean/variance used to standardise ``[d_L, phi, delta]``.
        eval_table: optional ``[[metric, value], ...]`` rows written into the model card.
    """

    model_type = "hyperalign"
    # Trainer: only the score is a prediction; the diagnostics stay out of evaluation loops.
    keys_to_ignore_at_inference = ["loss_reg", "loss_ent", "cosine", "d_L", "phi", "delta", "a", "b", "g"]

    def __init__(
        self,
        backbone: str = "transformers",
        backbone_id: str = "preset:tiny-clip",
        backbone_revision: Optional[str] = None,
        open_clip_pretrained: Optional[str] = None,
        embed_dim: Optional[int] = None,
        image_size: Optional[int] = None,
        image_mean: Sequence[float] = CLIP_MEAN,
        image_std: Sequence[float] = CLIP_STD,
        max_text_length: int = 77,
        adapter_reduction: int = 4,
        adapter_gate_init: float = -4.0,
        alpha_max: float = 1.0,
        alpha_init: Optional[float] = None,
        curv_init: float = 1.0,
        learn_curv: bool = False,
        min_radius: float = 0.1,
        cone_alpha: float = 0.8,
        lambda_ent: float = 1.0,
        entail_mode: str = "score_weighted",
        aperture_eps: float = 0.1,
        regressor_hidden: Sequence[int] = (64, 64),
        stats_momentum: float = 0.1,
        eval_table: Optional[list] = None,
        **kwargs,
    ):
        if backbone not in BACKBONES:
            raise ValueError(f"backbone: expected one of {BACKBONES}, got {backbone!r}")
        if entail_mode not in ENTAIL_MODES:
            raise ValueError(f"entail_mode: expected one of {ENTAIL_MODES}, got {entail_mode!r}")
        if not isinstance(backbone_id, str) or not backbone_id:
            raise ValueError(f"backbone_id: expected a non-empty string, got {backbone_id!r}")
        if int(adapter_reduction) < 1:
            raise ValueError(f"adapter_reduction: expected an integer >= 1, got {adapter_reduction!r}")
        for name, value in (("alpha_max", alpha_max), ("curv_init", curv_init), ("min_radius", min_radius),
                            ("cone_alpha", cone_alpha)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name}: expected a positive finite number, got {value!r}")
        if alpha_init is not None and not (0 < alpha_init < alpha_max):
            raise ValueError(f"alpha_init: expected a value in (0, alpha_max={alpha_max}), got {alpha_init!r}")
        if not (isinstance(lambda_ent, (int, float)) and lambda_ent >= 0):
            raise ValueError(f"lambda_ent: expected a number >= 0, got {lambda_ent!r}")
        if len(tuple(image_mean)) != 3 or len(tuple(image_std)) != 3 or min(image_std) <= 0:
            raise ValueError(f"image_mean/image_std: expected 3 values each (std > 0), got {image_mean!r}, "
                             f"{image_std!r}")
        if not regressor_hidden or min(int(w) for w in regressor_hidden) < 1:
            raise ValueError(f"regressor_hidden: expected positive widths, got {regressor_hidden!r}")
        self.backbone = backbone
        self.backbone_id = backbone_id
        self.backbone_revision = backbone_revision
        self.open_clip_pretrained = open_clip_pretrained
        self.embed_dim = embed_dim
        self.image_size = image_size
        self.image_mean = [float(v) for v in image_mean]
        self.image_std = [float(v) for v in image_std]
        self.max_text_length = int(max_text_length)
        self.adapter_reduction = int(adapter_reduction)
        self.adapter_gate_init = float(adapter_gate_init)
        self.alpha_max = float(alpha_max)
        self.alpha_init = alpha_init
        self.curv_init = float(curv_init)
        self.learn_curv = bool(learn_curv)
        self.min_radius = float(min_radius)
        self.cone_alpha = float(cone_alpha)
        self.lambda_ent = float(lambda_ent)
        self.entail_mode = entail_mode
        self.aperture_eps = float(aperture_eps)
        self.regressor_hidden = [int(w) for w in regressor_hidden]
        self.stats_momentum = float(stats_momentum)
        self.eval_table = eval_table
        super().__init__(**kwargs)
