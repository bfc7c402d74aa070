"""HyperAlign: hyperbolic entailment cones for adaptive text-to-image alignment assessment (arXiv 2601.04614).

``HyperAlignModel`` scores (generated image, prompt) pairs on top of a frozen CLIP (transformers or open_clip)
and doubles as a reward model (``score``, ``as_reward_fn`` for trl's DDPO). Readers for AGIQA-3K, AIGCIQA2023 and
PKU-I2IQA, prompt-disjoint splits, IQA metrics and a ``Trainer``-based training loop live in the submodules.
"""

from ..hub import register_auto
from .configuration import HyperAlignConfig
from .modeling import CosineLinearBaseline, HyperAlignModel, HyperAlignOutput

register_auto(HyperAlignConfig, HyperAlignModel)

__all__ = ["CosineLinearBaseline", "HyperAlignConfig", "HyperAlignModel", "HyperAlignOutput"]
