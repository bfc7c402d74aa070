"""CReaL relation predictor: complex-valued relation learning with amplitude/phase prototypes (a PE-Net style head).

The head is the whole model (it takes RoI features, not images), so ``save_pretrained`` writes the full model as
safetensors plus our model card. Formulas follow ``shared/specs/creal.md`` section 3 ("Decisions" are binding):

* entity embedding ``s = W_ls e(t_s) + g_s * h_s(x_s)`` with ``g_s = sigmoid(W_gs[e(t_s); h_s(x_s)])`` (``o`` alike);
* pair fusion ``F(s,o) = ReLU(s + o) - (s - o)^2`` (PE-Net);
* union embedding ``u = g_u * h_u(x_u) + h_g(geometry(pair_boxes))`` with ``g_u = sigmoid(W_gu[F; h_u(x_u)])``;
* complex projection ``z = W_zr F + i W_zi F``, ``u_c = W_ur u + i W_ui u`` and Hadamard product ``r = z * u_c``;
* ``r_hat = r / ||[Re r; Im r]||``; amplitude ``A_k = |r_hat_k|^2`` (element-wise: the whole-vector norm is 1);
* ``v_a = W_a[Re; Im; A]``, ``Phi = atan2(Im, Re)``, ``v_p = W_p[v_a; sin Phi; cos Phi]``;
* ``logits = alpha * cos(v_a, P_a) / tau_a + (1 - alpha) * cos(v_p, P_p) / tau_p`` with
  ``alpha = sigmoid(W_alpha[v_a; v_p])`` per pair.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from .configuration import CReaLConfig
from .losses import (inverse_frequency_weights, prototype_regularizer, prototype_triplet_loss, relation_ce_loss)

NUM_GEOMETRY_FEATURES = 16
# Added to |r_hat_k| before dividing by it for sin/cos of the phase: atan2 has no gradient at 0 and Re/|r| would
# divide by zero there. Components of a unit 2*d_c vector are ~1/sqrt(2 d_c) (0.03 at d_c = 512), so 1e-4 changes
# sin/cos of a typical component by < 1e-5 while keeping the gradient below ~1e4.
PHASE_EPS = 1e-4


@dataclass
class CReaLOutput(ModelOutput):
    """Output of :class:`CReaLForRelationPrediction`.

    Attributes:
        loss: weighted sum of the enabled loss terms (when ``labels`` are given).
        logits: ``(R, K+1)`` gated relation logits (column 0 = background).
        loss_ce, loss_reg, loss_amp_triplet, loss_phase_triplet: the unweighted terms, for logging.
        amplitude_embeds: ``(R, d_e)`` l2-normalised amplitude-branch outputs ``v_a``.
        phase_embeds: ``(R, d_e)`` l2-normalised phase-branch outputs ``v_p``.
        gate: ``(R,)`` the dynamic gate ``alpha``.
        amplitude_logits, phase_logits: ``(R, K+1)`` the two branch logits before gating.
        relation_embeds: ``(R, 2 * d_c)`` the normalised complex relation ``[Re r_hat; Im r_hat]``.
    """

    loss: Optional[torch.Tensor] = None
    logits: Optional[torch.Tensor] = None
    loss_ce: Optional[torch.Tensor] = None
    loss_reg: Optional[torch.Tensor] = None
    loss_amp_triplet: Optional[torch.Tensor] = None
    loss_phase_triplet: Optional[torch.Tensor] = None
    amplitude_embeds: Optional[torch.Tensor] = None
    phase_embeds: Optional[torch.Tensor] = None
    gate: Optional[torch.Tensor] = None
    amplitude_logits: Optional[torch.Tensor] = None
    phase_logits: Optional[torch.Tensor] = None
    relation_embeds: Optional[torch.Tensor] = None


# ------------------------------------------------------------------------------------------------------------------
# input checks and box geometry
# ------------------------------------------------------------------------------------------------------------------
def _as_image_sizes(image_sizes, num_pairs: int, ref: torch.Tensor) -> torch.Tensor:
    """``(R, 2)`` (width, height) from ``None`` (boxes normalised to [0, 1]), a pair ``(W, H)`` or an ``(R, 2)``."""
    if image_sizes is None:
        return torch.ones(num_pairs, 2, dtype=ref.dtype, device=ref.device)
    sizes = torch.as_tensor(image_sizes, dtype=ref.dtype, device=ref.device)
    if sizes.shape == (2,):
        sizes = sizes.expand(num_pairs, 2)
    if sizes.shape != (num_pairs, 2):
        raise ValueError(f"image_sizes: expected (width, height) or shape ({num_pairs}, 2), got {tuple(sizes.shape)}")
    if not bool((sizes > 0).all()):
        raise ValueError(f"image_sizes: expected positive widths and heights, got min {sizes.min().item()}")
    return sizes


def check_boxes(name: str, boxes: torch.Tensor, image_sizes: torch.Tensor, tol: float = 1e-3) -> None:
    """Raise ``ValueError`` naming ``name`` if xyxy ``boxes`` ``(..., 4)`` are non-finite, have ``x2 < x1`` /
    ``y2 < y1`` or leave the image; ``image_sizes`` ``(..., 2)`` (width, height) broadcasts against ``boxes``.

    ``tol`` is relative to the image size: detector boxes that overshoot by rounding only are accepted.
    """
    if boxes.numel() == 0:
        return
    if not bool(torch.isfinite(boxes).all()):
        raise ValueError(f"{name}: expected finite box coordinates, got NaN/inf")
    x1, y1, x2, y2 = boxes.unbind(-1)
    if bool((x2 < x1).any()) or bool((y2 < y1).any()):
        bad = ((x2 < x1) | (y2 < y1)).nonzero()[0].tolist()
        raise ValueError(f"{name}: expected xyxy boxes with x2 >= x1 and y2 >= y1, got {boxes[tuple(bad)].tolist()} "
                         f"at index {bad}")
    w, h = image_sizes[..., 0], image_sizes[..., 1]
    outside = (x1 < -tol * w) | (y1 < -tol * h) | (x2 > w * (1 + tol)) | (y2 > h * (1 + tol))
    if bool(outside.any()):
        bad = outside.nonzero()[0].tolist()
        raise ValueError(f"{name}: expected boxes inside the image (0 <= x <= width, 0 <= y <= height), got "
                         f"{boxes[tuple(bad)].tolist()} at index {bad} for image size "
                         f"{image_sizes.expand(*boxes.shape[:-1], 2)[tuple(bad)].tolist()}")


def pair_box_features(pair_boxes: torch.Tensor, image_sizes: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Box-geometry descriptor of subject-object pairs.

    Args:
        pair_boxes: ``(R, 8)`` subject xyxy then object xyxy, in pixels of an image of size ``image_sizes``.
        image_sizes: ``(R, 2)`` (width, height); ``None`` means the boxes are already normalised to [0, 1].

    Returns:
        ``(R, 16)`` float32: normalised subject box (4), object box (4), centre offset ``dx, dy`` (2), log width and
        height ratios object/subject (2), intersection over subject area and over object area (2), centre distance
        (1) and union-box area (1), all in image-normalised units.
    """
    pb = pair_boxes.float()
    sizes = _as_image_sizes(image_sizes, pb.shape[0], pb).float()
    scale = sizes.repeat(1, 2)  # (R, 4): W, H, W, H
    s, o = pb[:, :4] / scale, pb[:, 4:] / scale
    sw, sh = (s[:, 2] - s[:, 0]).clamp_min(1e-6), (s[:, 3] - s[:, 1]).clamp_min(1e-6)  # 1e-6: degenerate boxes
    ow, oh = (o[:, 2] - o[:, 0]).clamp_min(1e-6), (o[:, 3] - o[:, 1]).clamp_min(1e-6)
    dx = (o[:, 0] + o[:, 2] - s[:, 0] - s[:, 2]) / 2
    dy = (o[:, 1] + o[:, 3] - s[:, 1] - s[:, 3]) / 2
    iw = (torch.minimum(s[:, 2], o[:, 2]) - torch.maximum(s[:, 0], o[:, 0])).clamp_min(0)
    ih = (torch.minimum(s[:, 3], o[:, 3]) - torch.maximum(s[:, 1], o[:, 1])).clamp_min(0)
    inter = iw * ih
    uw = torch.maximum(s[:, 2], o[:, 2]) - torch.minimum(s[:, 0], o[:, 0])
    uh = torch.maximum(s[:, 3], o[:, 3]) - torch.minimum(s[:, 1], o[:, 1])
    return torch.cat([s, o, torch.stack([dx, dy, torch.log(ow / sw), torch.log(oh / sh), inter / (sw * sh),
                                         inter / (ow * oh), torch.sqrt(dx * dx + dy * dy), uw * uh], dim=1)], dim=1)


def validate_relation_inputs(config, subject_features, object_features, union_features, pair_boxes, image_sizes,
                             subject_labels, object_labels, labels) -> torch.Tensor:
    """Check the public inputs of the relation predictors; returns the ``(R, 2)`` image sizes."""
    r = subject_features.shape[0] if subject_features.ndim == 2 else None
    for name, t, dim in (("subject_features", subject_features, config.entity_dim),
                         ("object_features", object_features, config.entity_dim),
                         ("union_features", union_features, config.union_dim)):
        if t.ndim != 2 or t.shape[1] != dim:
            raise ValueError(f"{name}: expected shape (num_pairs, {dim}), got {tuple(t.shape)}")
        if t.shape[0] != r:
            raise ValueError(f"{name}: expected {r} pairs (as subject_features), got {t.shape[0]}")
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name}: expected finite values, got NaN/inf")
    sizes = None
    if pair_boxes is not None or config.use_geometry:
        if pair_boxes is None:
            raise ValueError("pair_boxes: required (num_pairs, 8) subject+object xyxy boxes when use_geometry=True")
        if pair_boxes.ndim != 2 or pair_boxes.shape != (r, 8):
            raise ValueError(f"pair_boxes: expected shape ({r}, 8), got {tuple(pair_boxes.shape)}")
        sizes = _as_image_sizes(image_sizes, r, pair_boxes.float())
        try:
            check_boxes("pair_boxes", pair_boxes.float().view(r, 2, 4), sizes[:, None, :])
        except ValueError as err:
            if image_sizes is None:
                raise ValueError(f"{err} (image_sizes not given: pair_boxes must then be normalised to [0, 1])") \
                    from None
            raise
    for name, t, n in (("subject_labels", subject_labels, config.num_object_classes),
                       ("object_labels", object_labels, config.num_object_classes),
                       ("labels", labels, config.num_predicate_classes)):
        if t is None:
            if name != "labels" and getattr(config, "use_label_embedding", False):
                raise ValueError(f"{name}: required ({r},) class ids when use_label_embedding=True")
            continue
        if t.shape != (r,):
            raise ValueError(f"{name}: expected shape ({r},), got {tuple(t.shape)}")
        if t.dtype.is_floating_point:
            raise ValueError(f"{name}: expected integer class ids, got dtype {t.dtype}")
        if r and (int(t.min()) < 0 or int(t.max()) >= n):
            raise ValueError(f"{name}: expected ids in [0, {n - 1}], got range [{int(t.min())}, {int(t.max())}]")
    return sizes


def _mlp(d_in: int, d_hidden: int, d_out: int, dropout: float = 0.0) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(d_hidden, d_out))


class CReaLPreTrainedModel(PreTrainedModel):
    """Base class: config, init and Auto-class plumbing."""

    config_class = CReaLConfig
    base_model_prefix = "creal"
    main_input_name = "subject_features"
    _no_split_modules = []

    @torch.no_grad()
    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            init.xavier_uniform_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=0.1)
        if isinstance(module, CReaLForRelationPrediction):
            if module.amp_prototypes is not None:
                init.normal_(module.amp_prototypes, mean=0.0, std=1.0)
                init.normal_(module.phase_prototypes, mean=0.0, std=1.0)
            init.constant_(module.log_tau_a, math.log(self.config.temperature_init))
            init.constant_(module.log_tau_p, math.log(self.config.temperature_init))


class CReaLForRelationPrediction(CReaLPreTrainedModel):
    """CReaL predicate classifier over candidate subject-object pairs (flattened over images).

    Args:
        config: :class:`CReaLConfig`.
        predicate_text_embeds: ``(K+1, prototype_text_dim)`` text-encoder embeddings of the predicate names, required
            at construction when ``config.prototype_init == "text"`` for a new model (see
            :func:`predicate_text_embeddings`); stored as a buffer and saved with the weights.
    """

    def __init__(self, config: CReaLConfig, predicate_text_embeds: Optional[torch.Tensor] = None):
        super().__init__(config)
        c = config
        d, dc, de, k1 = c.hidden_size, c.complex_dim, c.embed_dim, c.num_predicate_classes
        # entity embedding (PE-Net: s = W_s GloVe(t_s) + g_s * h(x_s)); the class embedding replaces GloVe
        self.subject_visual = _mlp(c.entity_dim, d, d, c.dropout)
        self.object_visual = _mlp(c.entity_dim, d, d, c.dropout)
        if c.use_label_embedding:
            self.subject_label_embed = nn.Embedding(c.num_object_classes, c.label_embed_dim)
            self.object_label_embed = nn.Embedding(c.num_object_classes, c.label_embed_dim)
            self.subject_label_proj = nn.Linear(c.label_embed_dim, d)
            self.object_label_proj = nn.Linear(c.label_embed_dim, d)
            self.subject_gate = nn.Linear(c.label_embed_dim + d, d)
            self.object_gate = nn.Linear(c.label_embed_dim + d, d)
        self.union_visual = _mlp(c.union_dim, d, d, c.dropout)
        self.union_gate = nn.Linear(2 * d, d)
        if c.use_geometry:
            self.geometry = _mlp(NUM_GEOMETRY_FEATURES, c.geometry_dim, d)
        self.dropout = nn.Dropout(c.dropout)
        # complex projections: [W_zr; W_zi] for F(s,o) and [W_ur; W_ui] for the union feature
        self.pair_to_complex = nn.Linear(d, 2 * dc)
        self.union_to_complex = nn.Linear(d, 2 * dc)
        self.amplitude_proj = nn.Linear(3 * dc, de)  # W_a [Re; Im; A]
        self.phase_proj = nn.Linear(de + 2 * dc, de)  # W_p [v_a; sin Phi; cos Phi]
        self.gate_proj = nn.Linear(2 * de, 1)  # alpha = sigmoid(W_alpha [v_a; v_p])
        if c.prototype_init == "learned":
            self.amp_prototypes = nn.Parameter(torch.empty(k1, de))
            self.phase_prototypes = nn.Parameter(torch.empty(k1, de))
        else:
            self.amp_prototypes = None
            self.phase_prototypes = None
            # PE-Net: c_k = W_p GloVe(predicate_k); the fixed word vectors become text-encoder embeddings
            self.amp_prototype_mlp = _mlp(c.prototype_text_dim, de, de)
            self.phase_prototype_mlp = _mlp(c.prototype_text_dim, de, de)
            if predicate_text_embeds is None:
                predicate_text_embeds = torch.zeros(k1, c.prototype_text_dim)  # filled by from_pretrained
            elif tuple(predicate_text_embeds.shape) != (k1, c.prototype_text_dim):
                raise ValueError(f"predicate_text_embeds: expected shape ({k1}, {c.prototype_text_dim}), "
                                 f"got {tuple(predicate_text_embeds.shape)}")
            self.register_buffer("predicate_text_embeds", predicate_text_embeds.detach().float().clone())
        self.log_tau_a = nn.Parameter(torch.empty(()))
        self.log_tau_p = nn.Parameter(torch.empty(()))
        self.post_init()

    # -- pieces ------------------------------------------------------------------------------------------------
    def prototypes(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw (unnormalised) amplitude and phase prototypes ``P_a, P_p``: ``(K+1, d_e)`` each."""
        if self.amp_prototypes is not None:
            return self.amp_prototypes, self.phase_prototypes
        t = self.predicate_text_embeds.to(self.amp_prototype_mlp[0].weight.dtype)
        return self.amp_prototype_mlp(t), self.phase_prototype_mlp(t)

    def class_weights(self, device=None) -> Optional[torch.Tensor]:
        """``(K+1,)`` inverse-frequency CE weights from the config, or ``None`` without re-weighting.

        Recomputed from ``config.predicate_frequencies`` on each call (K+1 numbers) instead of being a buffer, so
        models built on the meta device by ``from_pretrained`` need nothing restored.
        """
        if self.config.loss_reweighting != "inverse_frequency":
            return None
        return inverse_frequency_weights(self.config.predicate_frequencies, self.config.reweight_power).to(device)

    def temperatures(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(tau_a, tau_p)``, clamped below at ``min_temperature`` (PE-Net caps its logit scale at 100)."""
        lo = math.log(self.config.min_temperature)
        return self.log_tau_a.clamp_min(lo).exp(), self.log_tau_p.clamp_min(lo).exp()

    def _entity(self, feats, labels, visual, label_embed, label_proj, gate):
        h = visual(feats)
        if not self.config.use_label_embedding:
            return h
        e = label_embed(labels)
        return label_proj(e) + torch.sigmoid(gate(torch.cat([e, h], dim=-1))) * h

    def forward(
        self,
        subject_features: torch.Tensor,
        object_features: torch.Tensor,
        union_features: torch.Tensor,
        pair_boxes: Optional[torch.Tensor] = None,
        subject_labels: Optional[torch.Tensor] = None,
        object_labels: Optional[torch.Tensor] = None,
        labels: Optional[torch.Tensor] = None,
        image_sizes: Optional[torch.Tensor] = None,
        validate: bool = True,
    ) -> CReaLOutput:
        """Relation logits (and losses when ``labels`` are given) for ``R`` candidate pairs.

        Args:
            subject_features: ``(R, entity_dim)`` RoI features of the subjects.
            object_features: ``(R, entity_dim)`` RoI features of the objects.
            union_features: ``(R, union_dim)`` features of the union boxes.
            pair_boxes: ``(R, 8)`` subject xyxy then object xyxy (pixels of ``image_sizes``; needed when
                ``config.use_geometry``).
            subject_labels: ``(R,)`` subject class ids in ``0..num_object_classes-1`` (GT in PredCls, predicted in
                SGCls/SGDet; needed when ``config.use_label_embedding``).
            object_labels: ``(R,)`` object class ids.
            labels: ``(R,)`` predicate ids in ``0..K`` (0 = background) for the losses.
            image_sizes: ``(R, 2)`` or ``(2,)`` (width, height) of each pair's image; ``None``: boxes in [0, 1].
            validate: check the inputs (set ``False`` in tight inference loops on trusted data: the checks
                synchronise the GPU).

        Returns:
            :class:`CReaLOutput`.
        """
        c = self.config
        if validate:
            image_sizes = validate_relation_inputs(c, subject_features, object_features, union_features, pair_boxes,
                                                   image_sizes, subject_labels, object_labels, labels)
        s = self._subject_embed(subject_features, subject_labels)
        o = self._object_embed(object_features, object_labels)
        return self._relation_head(s, o, union_features, pair_boxes, image_sizes, labels)

    def _subject_embed(self, feats, labels):
        return self.dropout(self._entity(feats, labels, self.subject_visual, getattr(self, "subject_label_embed", None),
                                         getattr(self, "subject_label_proj", None),
                                         getattr(self, "subject_gate", None)))

    def _object_embed(self, feats, labels):
        return self.dropout(self._entity(feats, labels, self.object_visual, getattr(self, "object_label_embed", None),
                                         getattr(self, "object_label_proj", None), getattr(self, "object_gate", None)))

    def forward_image(self, object_features: torch.Tensor, union_features: torch.Tensor, rel_pairs: torch.Tensor,
                      boxes: Optional[torch.Tensor] = None, object_labels: Optional[torch.Tensor] = None,
                      image_size=None, labels: Optional[torch.Tensor] = None, validate: bool = True) -> CReaLOutput:
        """One image's pairs with the entity embeddings computed once per object instead of once per pair.

        Equal to :meth:`forward` on the gathered per-pair inputs (in eval mode; in training, dropout masks are drawn
        per object), but the subject/object MLPs run on ``N`` rows instead of ``R = N (N - 1)``.

        Args:
            object_features: ``(N, entity_dim)`` RoI features of the image's objects.
            union_features: ``(R, union_dim)`` union-box features of the pairs.
            rel_pairs: ``(R, 2)`` [subject index, object index] into the objects.
            boxes: ``(N, 4)`` xyxy object boxes (pixels of ``image_size``; needed when ``config.use_geometry``).
            object_labels: ``(N,)`` object class ids (needed when ``config.use_label_embedding``).
            image_size: ``(width, height)``; ``None``: boxes normalised to [0, 1].
            labels: ``(R,)`` predicate ids for the losses.
            validate: check the inputs.

        Returns:
            :class:`CReaLOutput` over the ``R`` pairs.
        """
        c = self.config
        if validate:
            n = object_features.shape[0] if object_features.ndim == 2 else -1
            if object_features.ndim != 2 or object_features.shape[1] != c.entity_dim:
                raise ValueError(f"object_features: expected shape (num_objects, {c.entity_dim}), "
                                 f"got {tuple(object_features.shape)}")
            if rel_pairs.ndim != 2 or rel_pairs.shape[1] != 2 or rel_pairs.dtype.is_floating_point:
                raise ValueError(f"rel_pairs: expected integer (num_pairs, 2), got {tuple(rel_pairs.shape)} "
                                 f"{rel_pairs.dtype}")
            if rel_pairs.numel() and (int(rel_pairs.min()) < 0 or int(rel_pairs.max()) >= n):
                raise ValueError(f"rel_pairs: expected indices in [0, {n - 1}], got range "
                                 f"[{int(rel_pairs.min())}, {int(rel_pairs.max())}]")
            if boxes is not None and tuple(boxes.shape) != (n, 4):
                raise ValueError(f"boxes: expected shape ({n}, 4), got {tuple(boxes.shape)}")
            if object_labels is not None and tuple(object_labels.shape) != (n,):
                raise ValueError(f"object_labels: expected shape ({n},), got {tuple(object_labels.shape)}")
        si, oi = rel_pairs[:, 0], rel_pairs[:, 1]
        pair_boxes = None if boxes is None else torch.cat([boxes[si], boxes[oi]], dim=1)
        sl = None if object_labels is None else object_labels[si]
        ol = None if object_labels is None else object_labels[oi]
        sizes = image_size
        if validate:
            # per-pair checks on gathered views of the small inputs (features stay per object)
            sizes = validate_relation_inputs(c, object_features[si], object_features[oi], union_features, pair_boxes,
                                             image_size, sl, ol, labels)
        lab = object_labels if c.use_label_embedding else None
        s = self._subject_embed(object_features, lab)[si]
        o = self._object_embed(object_features, lab)[oi]
        return self._relation_head(s, o, union_features, pair_boxes, sizes, labels)

    def _relation_head(self, s, o, union_features, pair_boxes, image_sizes, labels) -> CReaLOutput:
        """Everything after the entity embeddings ``s``, ``o`` ``(R, D)``: fusion, complex branch, logits, losses."""
        c = self.config
        fused = F.relu(s + o) - (s - o) ** 2  # F(s,o), PE-Net
        hu = self.union_visual(union_features)
        u = torch.sigmoid(self.union_gate(torch.cat([fused, hu], dim=-1))) * hu
        if c.use_geometry:
            u = u + self.geometry(pair_box_features(pair_boxes, image_sizes).to(hu.dtype))
        u = self.dropout(u)
        zr, zi = self.pair_to_complex(fused).chunk(2, dim=-1)
        ur, ui = self.union_to_complex(u).chunk(2, dim=-1)
        # complex Hadamard product and l2 normalisation over [Re; Im], in float32 (the norm of a 2*d_c vector
        # overflows fp16 easily); the clamp only guards an all-zero relation vector.
        re = (zr * ur - zi * ui).float()
        im = (zr * ui + zi * ur).float()
        norm = torch.sqrt((re * re + im * im).sum(-1, keepdim=True)).clamp_min(1e-12)
        re, im = re / norm, im / norm
        amp = re * re + im * im  # A_k = |r_hat_k|^2, element-wise
        mod = torch.sqrt(amp + PHASE_EPS**2)
        sin_phi, cos_phi = im / mod, re / mod  # sin/cos of Phi = atan2(Im, Re) without the 2*pi wrap
        dtype = zr.dtype
        v_a = self.amplitude_proj(torch.cat([re, im, amp], dim=-1).to(dtype))
        v_p = self.phase_proj(torch.cat([v_a, sin_phi.to(dtype), cos_phi.to(dtype)], dim=-1))
        alpha = torch.sigmoid(self.gate_proj(torch.cat([v_a, v_p], dim=-1)).float())  # (R, 1)
        p_a, p_p = self.prototypes()
        tau_a, tau_p = self.temperatures()
        va_hat, vp_hat = F.normalize(v_a.float(), dim=-1), F.normalize(v_p.float(), dim=-1)
        logits_a = va_hat @ F.normalize(p_a.float(), dim=-1).t() / tau_a.float()
        logits_p = vp_hat @ F.normalize(p_p.float(), dim=-1).t() / tau_p.float()
        logits = alpha * logits_a + (1 - alpha) * logits_p

        loss = loss_ce = loss_reg = loss_amp = loss_phs = None
        if labels is not None:
            labels = labels.to(logits.device).long()
            zero = logits.sum() * 0.0
            loss = zero
            loss_ce = relation_ce_loss(logits, labels, self.class_weights(logits.device))
            l21, margin = prototype_regularizer(p_a, p_p, c.gamma_dp)
            loss_reg = l21 + margin
            loss_amp = prototype_triplet_loss(v_a, p_a, labels, c.gamma_a, c.num_hard_negatives)
            loss_phs = prototype_triplet_loss(v_p, p_p, labels, c.gamma_p, c.num_hard_negatives)
            if c.use_ce_loss:
                loss = loss + c.ce_loss_weight * loss_ce
            if c.use_reg_loss:
                loss = loss + c.reg_loss_weight * loss_reg
            if c.use_amp_triplet_loss:
                loss = loss + c.amp_triplet_loss_weight * loss_amp
            if c.use_phase_triplet_loss:
                loss = loss + c.phase_triplet_loss_weight * loss_phs
        return CReaLOutput(loss=loss, logits=logits, loss_ce=loss_ce, loss_reg=loss_reg, loss_amp_triplet=loss_amp,
                           loss_phase_triplet=loss_phs, amplitude_embeds=va_hat, phase_embeds=vp_hat,
                           gate=alpha.squeeze(-1), amplitude_logits=logits_a, phase_logits=logits_p,
                           relation_embeds=torch.cat([re, im], dim=-1))

    # -- hub ---------------------------------------------------------------------------------------------------
    def model_card(self, eval_table: Optional[str] = None):
        """The model card (``huggingface_hub.ModelCard``) written next to the weights."""
        from ..hub.cards import build_model_card

        c = self.config
        n_params = sum(p.numel() for p in self.parameters())
        summary = (f"CReaL relation predictor (complex-valued relation learning for scene graph generation): "
                   f"{c.num_predicate_classes} predicate classes (incl. background) over {c.num_object_classes} "
                   f"object classes, {c.entity_dim}-d entity / {c.union_dim}-d union features, d_c={c.complex_dim}, "
                   f"d_e={c.embed_dim}, prototypes '{c.prototype_init}', {n_params:,} parameters.")
        usage = ("import vlplugins  # registers the Auto classes\n"
                 "from transformers import AutoModel\n"
                 "model = AutoModel.from_pretrained(\"<this repo>\")\n"
                 "out = model(subject_features, object_features, union_features, pair_boxes=pair_boxes,\n"
                 "            subject_labels=subject_labels, object_labels=object_labels, image_sizes=(W, H))\n"
                 "scores = out.logits.softmax(-1)  # (num_pairs, num_predicates), column 0 = background")
        # No public paper link or code of CReaL is known to us; the head follows PE-Net's prototype formulation,
        # which the card cites so readers can find the notation (F(s, o), prototypes, L_reg, triplet losses).
        references = ("CReaL: complex-valued relation learning for scene graph generation (paper link not public "
                      "at the time of writing). Prototype-based embedding it builds on: PE-Net, Zheng et al., CVPR "
                      "2023, https://arxiv.org/abs/2303.07096. Evaluation protocol: Scene-Graph-Benchmark.pytorch.")
        return build_model_card(title="CReaL relation predictor", summary=summary, usage=usage,
                                tags=["scene-graph-generation", "creal", "relation-prediction"],
                                eval_table=eval_table, extra_sections={"References": references})

    def save_pretrained(self, save_directory, *args, eval_table: Optional[str] = None, **kwargs):
        """``PreTrainedModel.save_pretrained`` (config + safetensors) plus our ``README.md`` model card."""
        kwargs.pop("safe_serialization", None)  # safetensors only
        push = kwargs.pop("push_to_hub", False)
        super().save_pretrained(save_directory, *args, **kwargs)
        self.model_card(eval_table).save(os.path.join(str(save_directory), "README.md"))
        if push:
            self.push_to_hub(kwargs.get("repo_id") or os.path.basename(os.path.normpath(str(save_directory))),
                             token=kwargs.get("token"))

    def push_to_hub(self, repo_id: str, *, private: Optional[bool] = None, token=None,
                    revision: Optional[str] = None, commit_message: Optional[str] = None, create_pr: bool = False,
                    **_) -> str:
        """Upload config, safetensors weights and our model card to ``repo_id`` (created if missing)."""
        from ..hub.checkpoint import push_folder_to_hub

        return push_folder_to_hub(self.save_pretrained, repo_id, private=private, token=token, revision=revision,
                                  commit_message=commit_message or "Upload CReaL relation predictor",
                                  create_pr=create_pr)


class LinearRelationPredictor(nn.Module):
    """Baseline: one linear layer over the same inputs as CReaL.

    ``logits = W [x_s; x_o; x_u; geometry(pair_boxes); onehot(t_s); onehot(t_o)] + b`` trained with plain
    cross-entropy. Same forward signature and validation as :class:`CReaLForRelationPrediction`.
    """

    def __init__(self, config: CReaLConfig):
        super().__init__()
        self.config = config
        d_in = 2 * config.entity_dim + config.union_dim
        d_in += NUM_GEOMETRY_FEATURES if config.use_geometry else 0
        d_in += 2 * config.num_object_classes if config.use_label_embedding else 0
        self.linear = nn.Linear(d_in, config.num_predicate_classes)

    def forward(self, subject_features, object_features, union_features, pair_boxes=None, subject_labels=None,
                object_labels=None, labels=None, image_sizes=None, validate: bool = True) -> CReaLOutput:
        """Logits ``(R, K+1)`` and, with ``labels``, the cross-entropy loss (shapes as in CReaL)."""
        c = self.config
        if validate:
            image_sizes = validate_relation_inputs(c, subject_features, object_features, union_features, pair_boxes,
                                                   image_sizes, subject_labels, object_labels, labels)
        parts = [subject_features, object_features, union_features]
        if c.use_geometry:
            parts.append(pair_box_features(pair_boxes, image_sizes).to(subject_features.dtype))
        if c.use_label_embedding:
            parts += [F.one_hot(subject_labels, c.num_object_classes).to(subject_features.dtype),
                      F.one_hot(object_labels, c.num_object_classes).to(subject_features.dtype)]
        logits = self.linear(torch.cat(parts, dim=-1)).float()
        loss = None if labels is None else F.cross_entropy(logits, labels.long())
        return CReaLOutput(loss=loss, logits=logits, loss_ce=loss)


@torch.no_grad()
def predicate_text_embeddings(predicate_names: Sequence[str], text_model=None, tokenizer=None,
                              template: str = "{}") -> torch.Tensor:
    """Text-encoder embeddings of the predicate names, for ``prototype_init="text"``.

    Args:
        predicate_names: ``K+1`` names, index 0 the background class (e.g. ``"__background__"``; it is embedded as
            ``"background"``).
        text_model: a transformers ``CLIPModel`` (its ``get_text_features``) or ``CLIPTextModelWithProjection``;
            default: the ``tiny-clip`` preset (random weights; prefer a trained tower).
        tokenizer: default :func:`vlplugins.hub.tokenizers.clip_tokenizer`.
        template: format string applied to each name.

    Returns:
        ``(K+1, text_dim)`` float32 embeddings.
    """
    if len(predicate_names) < 2:
        raise ValueError(f"predicate_names: expected background + at least one predicate, got {predicate_names}")
    if text_model is None:
        from ..hub.presets import build_from_preset

        text_model = build_from_preset("tiny-clip")
    if tokenizer is None:
        from ..hub.tokenizers import clip_tokenizer

        tokenizer = clip_tokenizer()
    names = [template.format("background" if n.startswith("__") else n) for n in predicate_names]
    enc = tokenizer(names, padding=True, return_tensors="pt")
    device = next(text_model.parameters()).device
    enc = {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
    if hasattr(text_model, "get_text_features"):
        out = text_model.get_text_features(**enc)
    else:
        out = text_model(**enc)
    if not isinstance(out, torch.Tensor):  # ModelOutput (transformers 5 may return one from get_text_features)
        out = out.text_embeds if getattr(out, "text_embeds", None) is not None else out.pooler_output
    return out.float().cpu()
