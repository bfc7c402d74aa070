"""vlplugins: vision-language research plugins for transformers, PEFT, LAVIS and open_clip.

Importing ``vlplugins`` registers every plugin's config and model with the transformers Auto classes, so
``AutoConfig.from_pretrained(dir)`` / ``AutoModel.from_pretrained(dir)`` work without ``trust_remote_code``.
Plugin sub-packages are imported on first attribute access (``vlplugins.creal``) as well; heavy optional
dependencies (LAVIS, open_clip models) are only imported by the modules that need them.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

PLUGINS = ("hyperbolic_blip2", "creal", "hyperalign", "contrastive_attention")


def _register_plugins() -> None:
    # Each plugin package registers its classes in its own __init__ (vlplugins.hub.register_auto).
    for name in PLUGINS:
        try:
            importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as err:
            # A plugin sub-package that is not present in this installation is skipped; any other
            # missing module is a real error and propagates.
            if err.name != f"{__name__}.{name}":
                raise


_register_plugins()

__all__ = ["PLUGINS", "__version__"]
