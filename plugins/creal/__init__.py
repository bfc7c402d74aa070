"""CReaL: complex-valued relation learning for scene graph generation (relation head, losses, SGG data/evaluation).

Importing this package registers :class:`CReaLConfig` / :class:`CReaLForRelationPrediction` with ``AutoConfig`` /
``AutoModel`` (model type ``"creal"``). Heavy pieces (feature extraction, VG-150 reader, CLI, demo) live in their own
modules and are imported lazily.
"""

from ..hub.registry import register_auto
from .configuration import CReaLConfig
from .evaluation import SceneGraphEvaluator
from .losses import inverse_frequency_weights, prototype_regularizer, prototype_triplet_loss, relation_ce_loss
from .modeling import (CReaLForRelationPrediction, CReaLOutput, LinearRelationPredictor, pair_box_features,
                       predicate_text_embeddings)

register_auto(CReaLConfig, CReaLForRelationPrediction)

__all__ = ["CReaLConfig", "CReaLForRelationPrediction", "CReaLOutput", "LinearRelationPredictor",
           "SceneGraphEvaluator", "inverse_frequency_weights", "pair_box_features", "predicate_text_embeddings",
           "prototype_regularizer", "prototype_triplet_loss", "relation_ce_loss"]
