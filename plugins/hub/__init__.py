"""Hub helpers shared by every plugin: Auto-class registration, presets, model cards, head-only checkpoints."""

from .presets import build_from_preset, list_presets, load_preset, preset_info, presets_dir
from .registry import register_auto

__all__ = ["build_from_preset", "list_presets", "load_preset", "preset_info", "presets_dir", "register_auto"]
