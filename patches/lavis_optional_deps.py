"""Stub modules for LAVIS' heavy optional dependencies that its package ``__init__`` imports eagerly.

``import lavis`` imports every task and model module. Two of them import packages the BLIP-2 Q-Former never uses:
``spacy`` (``models/img2prompt_models/img2prompt_vqa.py``) and ``pycocoevalcap`` (captioning / dialogue tasks).
Installing them would pull spaCy models and Java-based COCO caption scorers. When (and only when) a package is
not importable, a stub module is registered in ``sys.modules`` so module-level imports (``import spacy``,
``from pycocoevalcap.eval import COCOEvalCap``) succeed; every name taken from a stub is a placeholder whose
use (call, instantiation) raises ``ImportError`` naming the real package to install. Idempotent.

Checked on: salesforce-lavis 1.0.2 (Python 3.11). Installing the real packages makes this a no-op.
"""

from __future__ import annotations

import importlib.util
import sys
import types

# module name -> pip package that provides it
STUBBED = {
    "spacy": "spacy",
    "pycocoevalcap": "pycocoevalcap",
    "pycocoevalcap.eval": "pycocoevalcap",
}


def _placeholder(qualname: str, package: str):
    def fail(*args, **kwargs):
        raise ImportError(f"{qualname} needs the optional package {package!r} (pip install {package}); vlplugins "
                          "stubbed it so that `import lavis` works without it")

    # A class, so it also works as a base class or in isinstance checks at import time; using it raises.
    return type(qualname.rsplit(".", 1)[-1], (), {"__new__": lambda cls, *a, **k: fail(), "__vlplugins_stub__": True,
                                                  "__doc__": f"Placeholder for {qualname} ({package} missing)."})


class _MissingDependency(types.ModuleType):
    """A stub module: every attribute is a placeholder that raises ``ImportError`` when used."""

    def __init__(self, name: str, package: str):
        super().__init__(name)
        self.__dict__["_package"] = package
        self.__dict__["__vlplugins_stub__"] = True
        self.__dict__["__path__"] = []  # behaves as a package so submodule imports resolve to stubs

    def __getattr__(self, attr):
        if attr.startswith("__") and attr.endswith("__"):
            raise AttributeError(attr)
        return _placeholder(f"{self.__name__}.{attr}", self._package)


def apply() -> list[str]:
    """Register stubs for every missing optional dependency; returns the stubbed module names."""
    stubbed = []
    for name, package in STUBBED.items():
        if name in sys.modules:
            continue
        root = name.split(".")[0]
        if root not in sys.modules and importlib.util.find_spec(root) is not None:
            continue  # the real package is installed
        if root in sys.modules and not getattr(sys.modules[root], "__vlplugins_stub__", False):
            continue
        sys.modules[name] = _MissingDependency(name, package)
        stubbed.append(name)
    return stubbed
