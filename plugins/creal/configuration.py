"""Configuration of the CReaL relation predictor (complex-valued relation learning for scene graph generation)."""

from __future__ import annotations

from typing import Optional, Sequence

from transformers import PreTrainedConfig

PROTOTYPE_INITS = ("learned", "text")
REWEIGHTINGS = ("none", "inverse_frequency")


class CReaLConfig(PreTrainedConfig):
    r"""Configuration of :class:`~vlplugins.creal.CReaLForRelationPrediction`.

    The head follows ``shared/specs/creal.md`` (a PE-Net style prototype head with a complex relation branch):
    entity embedding and pair fusion ``F(s,o) = ReLU(s+o) - (s-o)^2``, projection to complex space, Hadamard product
    with the union feature, l2 normalisation, amplitude branch ``W_a[Re; Im; |r|^2]``, phase branch
    ``W_p[v_a; sin(Phi); cos(Phi)]``, two prototype sets, learnable temperatures and a per-pair gate ``alpha``.

    Args:
        num_object_classes: object classes including background 0 (VG-150: 151).
        num_predicate_classes: predicate classes including background 0 (VG-150: 51).
        entity_dim: width of the subject / object RoI features given to ``forward`` (paper: 4096).
        union_dim: width of the union-box features (paper: 4096).
        hidden_size: ``D``, the width of the entity embeddings ``s``, ``o`` and of ``F(s,o)``.
        complex_dim: ``d_c``, the number of complex components of the relation representation ``r``.
        embed_dim: ``d_e``, the width of the branch outputs ``v_a``, ``v_p`` and of the prototypes.
        label_embed_dim: width of the object-class embeddings (PE-Net uses 300-d GloVe; here learned).
        use_label_embedding: add the subject/object class embeddings to the entity embedding (needs labels).
        use_geometry: add an embedding of the pair's box geometry (``pair_boxes``) to the union branch.
        geometry_dim: hidden width of the box-geometry MLP.
        dropout: dropout on the entity and union embeddings during training.
        prototype_init: ``"learned"`` (free ``(K+1, d_e)`` parameters) or ``"text"`` (prototypes are an MLP of fixed
            text-encoder embeddings of the predicate names, as PE-Net does with GloVe).
        prototype_text_dim: width of the text embeddings when ``prototype_init="text"``.
        temperature_init: initial ``tau_a`` and ``tau_p`` (stored as ``log tau``; PE-Net's logit scale gives 0.07).
        min_temperature: lower clamp of ``tau`` (PE-Net clamps its logit scale at 100, i.e. ``tau >= 0.01``).
        use_ce_loss / ce_loss_weight: predicate cross-entropy over ``K+1`` classes.
        loss_reweighting: ``"none"`` or ``"inverse_frequency"`` (the paper's "double dagger" variant):
            class weight ``w_c = n_c^(-reweight_power)`` normalised so the frequency-weighted mean weight is 1.
        predicate_frequencies: training counts ``n_c`` per predicate class (length ``K+1``) for re-weighting.
        reweight_power: exponent of the inverse-frequency weights.
        use_reg_loss / reg_loss_weight: prototype regulariser ``L_reg`` (l2,1 similarity term + phase margin).
        gamma_dp: margin of the phase-prototype separation term; prototypes are l2-normalised, so squared distances
            lie in ``[0, 4]`` (orthogonal prototypes are at 2) and the margin must be below 4.
        use_amp_triplet_loss / amp_triplet_loss_weight / gamma_a: amplitude triplet loss and its margin.
        use_phase_triplet_loss / phase_triplet_loss_weight / gamma_p: phase triplet loss and its margin.
        num_hard_negatives: negatives averaged in the triplet losses (1 = single hardest; PE-Net uses 10).
    """

    model_type = "creal"

    def __init__(
        self,
        num_object_classes: int = 151,
        num_predicate_classes: int = 51,
        entity_dim: int = 4096,
        union_dim: int = 4096,
        hidden_size: int = 512,
        complex_dim: int = 512,
        embed_dim: int = 512,
        label_embed_dim: int = 128,
        use_label_embedding: bool = True,
        use_geometry: bool = True,
        geometry_dim: int = 128,
        dropout: float = 0.1,
        prototype_init: str = "learned",
        prototype_text_dim: int = 512,
        temperature_init: float = 0.07,
        min_temperature: float = 0.01,
        use_ce_loss: bool = True,
        ce_loss_weight: float = 1.0,
        loss_reweighting: str = "none",
        predicate_frequencies: Optional[Sequence[float]] = None,
        reweight_power: float = 0.5,
        use_reg_loss: bool = True,
        reg_loss_weight: float = 1.0,
        gamma_dp: float = 1.0,
        use_amp_triplet_loss: bool = True,
        amp_triplet_loss_weight: float = 1.0,
        gamma_a: float = 1.0,
        use_phase_triplet_loss: bool = True,
        phase_triplet_loss_weight: float = 1.0,
        gamma_p: float = 1.0,
        num_hard_negatives: int = 1,
        **kwargs,
    ):
        for name, value, low in (("num_object_classes", num_object_classes, 2),
                                 ("num_predicate_classes", num_predicate_classes, 2),
                                 ("entity_dim", entity_dim, 1), ("union_dim", union_dim, 1),
                                 ("hidden_size", hidden_size, 1), ("complex_dim", complex_dim, 1),
                                 ("embed_dim", embed_dim, 1), ("label_embed_dim", label_embed_dim, 1),
                                 ("geometry_dim", geometry_dim, 1), ("prototype_text_dim", prototype_text_dim, 1),
                                 ("num_hard_negatives", num_hard_negatives, 1)):
            if not isinstance(value, int) or value < low:
                raise ValueError(f"{name}: expected an int >= {low}, got {value!r}")
        if num_hard_negatives > num_predicate_classes - 1:
            raise ValueError(f"num_hard_negatives: expected <= num_predicate_classes - 1 = "
                             f"{num_predicate_classes - 1}, got {num_hard_negatives}")
        if prototype_init not in PROTOTYPE_INITS:
            raise ValueError(f"prototype_init: expected one of {PROTOTYPE_INITS}, got {prototype_init!r}")
        if loss_reweighting not in REWEIGHTINGS:
            raise ValueError(f"loss_reweighting: expected one of {REWEIGHTINGS}, got {loss_reweighting!r}")
        if loss_reweighting != "none":
            if predicate_frequencies is None or len(predicate_frequencies) != num_predicate_classes:
                raise ValueError(f"predicate_frequencies: expected {num_predicate_classes} counts for "
                                 f"loss_reweighting={loss_reweighting!r}, got {predicate_frequencies!r}")
        if predicate_frequencies is not None and any(float(f) < 0 for f in predicate_frequencies):
            raise ValueError(f"predicate_frequencies: expected non-negative counts, got {predicate_frequencies!r}")
        if not 0.0 < gamma_dp < 4.0:
            raise ValueError(f"gamma_dp: expected a margin in (0, 4) for l2-normalised prototypes, got {gamma_dp}")
        if not 0.0 < min_temperature <= temperature_init:
            raise ValueError(f"temperature_init: expected >= min_temperature = {min_temperature} > 0, "
                             f"got {temperature_init}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout: expected a probability in [0, 1), got {dropout}")
        self.num_object_classes = num_object_classes
        self.num_predicate_classes = num_predicate_classes
        self.entity_dim = entity_dim
        self.union_dim = union_dim
        self.hidden_size = hidden_size
        self.complex_dim = complex_dim
        self.embed_dim = embed_dim
        self.label_embed_dim = label_embed_dim
        self.use_label_embedding = use_label_embedding
        self.use_geometry = use_geometry
        self.geometry_dim = geometry_dim
        self.dropout = dropout
        self.prototype_init = prototype_init
        self.prototype_text_dim = prototype_text_dim
        self.temperature_init = temperature_init
        self.min_temperature = min_temperature
        self.use_ce_loss = use_ce_loss
        self.ce_loss_weight = ce_loss_weight
        self.loss_reweighting = loss_reweighting
        self.predicate_frequencies = None if predicate_frequencies is None else [float(f) for f in predicate_frequencies]
        self.reweight_power = reweight_power
        self.use_reg_loss = use_reg_loss
        self.reg_loss_weight = reg_loss_weight
        self.gamma_dp = gamma_dp
        self.use_amp_triplet_loss = use_amp_triplet_loss
        self.amp_triplet_loss_weight = amp_triplet_loss_weight
        self.gamma_a = gamma_a
        self.use_phase_triplet_loss = use_phase_triplet_loss
        self.phase_triplet_loss_weight = phase_triplet_loss_weight
        self.gamma_p = gamma_p
        self.num_hard_negatives = num_hard_negatives
        super().__init__(**kwargs)
