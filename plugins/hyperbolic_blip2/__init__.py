"""Hyperbolic BLIP-2 (Mandica et al., arXiv 2408.05097): hyperbolic ITC head for BLIP-2 retrieval models.

``import vlplugins`` registers :class:`HyperbolicBlip2Config` / :class:`HyperbolicBlip2ForImageTextRetrieval`
with ``AutoConfig`` / ``AutoModel``. The LAVIS adapter lives in :mod:`vlplugins.hyperbolic_blip2.lavis` and is the
only module that imports ``lavis``.
"""

from ..hub import register_auto
from .attach import HyperbolicHeadHandle, attach_hyperbolic_head
from .configuration import HyperbolicBlip2Config
from .data import HyperbolicBlip2Collator, random_text_pruning, read_coco_karpathy
from .head import BallEmbedding, HyperbolicITCHead
from .modeling import HyperbolicBlip2ForImageTextRetrieval, HyperbolicBlip2Output

register_auto(HyperbolicBlip2Config, HyperbolicBlip2ForImageTextRetrieval)

__all__ = [
    "BallEmbedding",
    "HyperbolicBlip2Collator",
    "HyperbolicBlip2Config",
    "HyperbolicBlip2ForImageTextRetrieval",
    "HyperbolicBlip2Output",
    "HyperbolicHeadHandle",
    "HyperbolicITCHead",
    "attach_hyperbolic_head",
    "random_text_pruning",
    "read_coco_karpathy",
]
