"""Configuration of the hyperbolic BLIP-2 head (Mandica et al., "Hyperbolic Learning with Multimodal Large
Language Models", arXiv 2408.05097).

The config names the BLIP-2 retrieval base (a Hub id / local directory / ``preset:<name>`` plus revision, or a
nested ``Blip2Config`` dict for a randomly initialised base) and the head's hyper-parameters. Defaults follow
``shared/specs/hyperbolic_blip2.md`` (Decisions): Poincaré ball with fixed curvature 1, MERU-style learnable
pre-map scale clamped to <= 1, cosine ITC over the best query with Random Query Selection (p = 0.5, unverified
in the paper), Random Text Pruning with spans of 0..7 tokens, BLIP-2's learnable temperature (init 0.07, clamped to
[0.001, 0.5]) and label smoothing 0.1, ITM on.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

from transformers import Blip2Config, PreTrainedConfig

LOSS_TYPES = ("cosine", "poincare_distance")
GEOMETRIES = ("poincare", "euclidean")
# Parts of Blip2ForImageTextRetrieval that BLIP-2 stage 1 trains (the ViT stays frozen): they are saved with the
# head so that a fine-tuned checkpoint is "base id + these tensors + the hyperbolic head".
DEFAULT_TRAINED_BASE_MODULES = ("query_tokens", "embeddings", "qformer", "vision_projection", "text_projection",
                                "itm_head")


class HyperbolicBlip2Config(PreTrainedConfig):
    r"""Configuration of [`HyperbolicBlip2ForImageTextRetrieval`].

    Args:
        base_model_name_or_path (`str`, *optional*, defaults to `"Salesforce/blip2-itm-vit-g"`):
            The BLIP-2 retrieval base: a Hub id, a local directory, or `"preset:<name>"` (random weights from
            `hub_configs/`). Ignored when `base_config` is given and this is `None`.
        base_model_revision (`str`, *optional*): Hub revision (commit/branch/tag) of the base.
        base_config (`dict` or `Blip2Config`, *optional*): nested BLIP-2 config; with
            `base_model_name_or_path=None` the base is built from it with random weights.
        embed_dim (`int`, *optional*): ITC embedding size (`image_text_hidden_size` of the base, 256 for BLIP-2);
            filled in from the base by `from_base`. Sets the scale initialisation `1/sqrt(embed_dim)`.
        num_query_tokens (`int`, *optional*): number of Q-Former queries of the base (filled in by `from_base`).
        geometry (`str`, defaults to `"poincare"`): `"poincare"` maps embeddings with exp^c_0 onto the ball;
            `"euclidean"` keeps them in R^d (the BLIP-2 baseline; radius = 2 * norm, the ball radius of the same
            tangent vector, so both geometries report comparable numbers).
        curvature (`float`, defaults to 1.0): curvature magnitude c > 0 of the ball (space of curvature -c).
        learn_curvature (`bool`, defaults to `False`): learn log(c) MERU-style, clamped to
            `[c / curvature_clamp_factor, c * curvature_clamp_factor]`.
        curvature_clamp_factor (`float`, defaults to 10.0): MERU's x10 clamp of the learnable curvature.
        learn_scale (`bool`, defaults to `True`): learn the per-modality pre-map scales exp(log_alpha).
        scale_init (`float`, *optional*): initial scale; default `1/sqrt(embed_dim)` (MERU).
        rqs_p (`float`, defaults to 0.5): Random Query Selection probability of using the best query (training
            only; 1.0 disables RQS). The paper's value was not recovered; 0.5 is a placeholder.
        rtp_max_span (`int`, defaults to 7): Random Text Pruning removes a span of 0..rtp_max_span content tokens
            per caption during training (0 disables RTP).
        temperature_init (`float`, defaults to 0.07): BLIP-2's ITC temperature initialisation.
        learn_temperature (`bool`, defaults to `True`).
        temperature_min / temperature_max (`float`, defaults to 0.001 / 0.5): temperature clamp (LAVIS BLIP).
        label_smoothing (`float`, defaults to 0.1): ITC cross-entropy label smoothing (BLIP-2).
        loss_type (`str`, defaults to `"cosine"`): `"cosine"` (adopted in the paper) or `"poincare_distance"`
            (negative geodesic distance as the logit; the paper's unstable ablation).
        use_itm (`bool`, defaults to `True`): add BLIP-2's image-text matching loss with hard negatives.
        itm_weight (`float`, defaults to 1.0): weight of the ITM loss.
        trained_base_modules (`list[str]`): base sub-modules saved with the head (BLIP-2 stage-1 trainables);
            frozen ones are rebuilt from the base reference on load.
        freeze_vision (`bool`, defaults to `True`): freeze the vision tower (BLIP-2 stage 1).
        special_token_ids (`list[int]`, *optional*): token ids RTP never removes and that do not count as caption
            content; `None` treats the first and last attended token ([CLS], [SEP]) as special.
        text_pad_token_id (`int`, defaults to 0): padding id written by RTP (BERT [PAD]).
    """

    model_type = "hyperbolic_blip2"

    def __init__(
        self,
        base_model_name_or_path: Optional[str] = "Salesforce/blip2-itm-vit-g",
        base_model_revision: Optional[str] = None,
        base_config: Optional[Union[dict, Blip2Config]] = None,
        embed_dim: Optional[int] = None,
        num_query_tokens: Optional[int] = None,
        geometry: str = "poincare",
        curvature: float = 1.0,
        learn_curvature: bool = False,
        curvature_clamp_factor: float = 10.0,
        learn_scale: bool = True,
        scale_init: Optional[float] = None,
        rqs_p: float = 0.5,
        rtp_max_span: int = 7,
        temperature_init: float = 0.07,
        learn_temperature: bool = True,
        temperature_min: float = 0.001,
        temperature_max: float = 0.5,
        label_smoothing: float = 0.1,
        loss_type: str = "cosine",
        use_itm: bool = True,
        itm_weight: float = 1.0,
        trained_base_modules: Optional[Sequence[str]] = None,
        freeze_vision: bool = True,
        special_token_ids: Optional[Sequence[int]] = None,
        text_pad_token_id: int = 0,
        **kwargs,
    ):
        if isinstance(base_config, Blip2Config):
            base_config = base_config.to_dict()
        self.base_model_name_or_path = base_model_name_or_path
        self.base_model_revision = base_model_revision
        self.base_config = base_config
        if base_config is not None:
            cfg = Blip2Config(**base_config)
            embed_dim = embed_dim if embed_dim is not None else cfg.image_text_hidden_size
            num_query_tokens = num_query_tokens if num_query_tokens is not None else cfg.num_query_tokens
        self.embed_dim = embed_dim
        self.num_query_tokens = num_query_tokens
        self.geometry = geometry
        self.curvature = curvature
        self.learn_curvature = learn_curvature
        self.curvature_clamp_factor = curvature_clamp_factor
        self.learn_scale = learn_scale
        self.scale_init = scale_init
        self.rqs_p = rqs_p
        self.rtp_max_span = rtp_max_span
        self.temperature_init = temperature_init
        self.learn_temperature = learn_temperature
        self.temperature_min = temperature_min
        self.temperature_max = temperature_max
        self.label_smoothing = label_smoothing
        self.loss_type = loss_type
        self.use_itm = use_itm
        self.itm_weight = itm_weight
        self.trained_base_modules = list(trained_base_modules if trained_base_modules is not None
                                         else DEFAULT_TRAINED_BASE_MODULES)
        self.freeze_vision = freeze_vision
        self.special_token_ids = list(special_token_ids) if special_token_ids is not None else None
        self.text_pad_token_id = text_pad_token_id
        super().__init__(**kwargs)
        self.validate_head()

    def validate_head(self) -> None:
        """Raise ``ValueError`` naming the field for any out-of-range hyper-parameter."""
        c = self.curvature
        if not isinstance(c, (int, float)) or not math.isfinite(c) or c <= 0:
            raise ValueError(f"curvature: expected a positive finite float, got {c!r}")
        if self.curvature_clamp_factor < 1:
            raise ValueError(f"curvature_clamp_factor: expected >= 1, got {self.curvature_clamp_factor}")
        if self.geometry not in GEOMETRIES:
            raise ValueError(f"geometry: expected one of {GEOMETRIES}, got {self.geometry!r}")
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type: expected one of {LOSS_TYPES}, got {self.loss_type!r}")
        if self.loss_type == "poincare_distance" and self.geometry != "poincare":
            raise ValueError("loss_type: 'poincare_distance' needs geometry='poincare', got geometry="
                             f"{self.geometry!r}")
        if not 0.0 <= self.rqs_p <= 1.0:
            raise ValueError(f"rqs_p: expected a probability in [0, 1], got {self.rqs_p}")
        if not isinstance(self.rtp_max_span, int) or self.rtp_max_span < 0:
            raise ValueError(f"rtp_max_span: expected an int >= 0, got {self.rtp_max_span!r}")
        if not 0 < self.temperature_min <= self.temperature_init <= self.temperature_max:
            raise ValueError("temperature_init: expected 0 < temperature_min <= temperature_init <= temperature_max, "
                             f"got {self.temperature_min}, {self.temperature_init}, {self.temperature_max}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing: expected a value in [0, 1), got {self.label_smoothing}")
        if self.scale_init is not None and not 0 < self.scale_init <= 1:
            raise ValueError(f"scale_init: expected a value in (0, 1] (the scale is clamped to <= 1), "
                             f"got {self.scale_init}")
        if self.base_model_name_or_path is None and self.base_config is None:
            raise ValueError("base_model_name_or_path: expected a Hub id / directory / 'preset:<name>' or a "
                             "base_config, got neither")

    @property
    def initial_scale(self) -> float:
        """Initial pre-map scale: ``scale_init`` or ``1/sqrt(embed_dim)`` (MERU), 1.0 if the dim is unknown."""
        if self.scale_init is not None:
            return float(self.scale_init)
        return 1.0 / math.sqrt(self.embed_dim) if self.embed_dim else 1.0

    def blip2_config(self) -> Optional[Blip2Config]:
        """The nested ``Blip2Config`` (``None`` when the base is referenced by id/path only)."""
        return None if self.base_config is None else Blip2Config(**self.base_config)
