"""Contrastive attention for LLaVA (Song, Li, Yu 2026, arXiv 2601.08151), one pass, inside ``generate``.

Layer indices are 0-based decoder-layer indices (transformers ``layer_idx``).

    from vlplugins.contrastive_attention import ContrastiveAttentionConfig, enable_contrastive_attention
    cfg = ContrastiveAttentionConfig.from_preset("llava-1.5-7b")
    with enable_contrastive_attention(model, cfg):
        out = model.generate(**inputs, max_new_tokens=32)
"""

from vlplugins.hub import register_auto

from .analysis import LayerAnalysis, analyze_layers
from .configuration import ContrastiveAttentionConfig
from .generate import ContrastiveAttentionProcessor, enable_contrastive_attention, generate
from .hooks import ContrastiveAttentionHandle

register_auto(ContrastiveAttentionConfig)

__all__ = [
    "LayerAnalysis",
    "analyze_layers",
    "ContrastiveAttentionConfig",
    "ContrastiveAttentionHandle",
    "ContrastiveAttentionProcessor",
    "enable_contrastive_attention",
    "generate",
]
