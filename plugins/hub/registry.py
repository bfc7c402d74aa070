"""Registration of plugin configs/models with the transformers Auto classes."""

from __future__ import annotations

from typing import Iterable

from transformers import AutoConfig, AutoModel


def register_auto(config_cls, model_cls=None, task_auto_classes: Iterable = ()) -> None:
    """Register ``config_cls`` with ``AutoConfig`` and ``model_cls`` with ``AutoModel`` and each task Auto class.

    Idempotent (``exist_ok=True``), so importing ``vlplugins`` twice or reloading a plugin is safe. After this,
    ``AutoConfig.from_pretrained(dir)`` / ``AutoModel.from_pretrained(dir)`` resolve the plugin from the
    ``model_type`` stored in ``config.json``; no ``trust_remote_code`` is involved.

    Args:
        config_cls: a ``PreTrainedConfig`` subclass with a unique ``model_type``.
        model_cls: the ``PreTrainedModel`` subclass whose ``config_class`` is ``config_cls`` (optional).
        task_auto_classes: further Auto classes (e.g. ``AutoModelForImageTextToText``) to register with.
    """
    AutoConfig.register(config_cls.model_type, config_cls, exist_ok=True)
    if model_cls is None:
        return
    for auto in (AutoModel, *task_auto_classes):
        auto.register(config_cls, model_cls, exist_ok=True)
