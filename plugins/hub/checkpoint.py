"""Saving, loading and pushing plugin checkpoints (safetensors only).

Two flavours share this module:

* :class:`HeadOnlyMixin` for a plugin attached to a big frozen base model: ``save_pretrained`` writes
  ``config.json`` (which names the base by Hub id / local path and revision), ``model.safetensors``
  with the plugin's own tensors only, and a model card; ``from_pretrained`` rebuilds the base from its
  reference and loads the head on top.
* :func:`push_folder_to_hub` for anything that can ``save_pretrained`` into a folder (models, configs):
  ``HfApi.create_repo`` + ``HfApi.upload_folder``, so our model card is the one that lands on the Hub
  (transformers' own ``push_to_hub`` replaces README.md with a generic card).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable, Optional

import torch
from huggingface_hub import HfApi, hf_hub_download
from safetensors.torch import load_file, save_file

WEIGHTS_NAME = "model.safetensors"
_HUB_KWARGS = ("revision", "token", "cache_dir", "local_files_only", "force_download", "subfolder")


def resolve_file(path_or_repo: str | os.PathLike, filename: str, **hub_kwargs) -> str:
    """Local path of ``filename`` in a directory or a Hub repo (downloaded through the HF cache).

    Raises:
        FileNotFoundError: the file is not in the directory / repo.
    """
    p = Path(path_or_repo)
    sub = hub_kwargs.get("subfolder") or ""
    if p.is_dir():
        f = p / sub / filename
        if not f.is_file():
            raise FileNotFoundError(f"{filename} not found in {p / sub}")
        return str(f)
    kwargs = {k: v for k, v in hub_kwargs.items() if k in _HUB_KWARGS and v is not None}
    return hf_hub_download(str(path_or_repo), filename, **kwargs)


def push_folder_to_hub(save_fn: Callable[[str], None], repo_id: str, *, private: Optional[bool] = None,
                       token=None, revision: Optional[str] = None, commit_message: Optional[str] = None,
                       create_pr: bool = False) -> str:
    """Create ``repo_id`` if needed, ``save_fn(tmpdir)`` and upload the folder as one commit.

    Returns:
        The commit URL/info string returned by ``HfApi.upload_folder``.
    """
    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    with tempfile.TemporaryDirectory() as tmp:
        save_fn(tmp)
        return api.upload_folder(repo_id=repo_id, folder_path=tmp, revision=revision,
                                 commit_message=commit_message or "Upload with vlplugins", create_pr=create_pr)


def save_safetensors(state: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Write ``state`` as safetensors; shared/tied or non-contiguous tensors are cloned first."""
    save_file({k: v.detach().contiguous().clone() for k, v in state.items()}, str(path), metadata={"format": "pt"})


class HeadOnlyMixin:
    """Mixin for ``PreTrainedModel`` plugins that wrap a frozen base model held at ``self.<base_attr>``.

    The subclass provides:

    * ``base_attr``: attribute name of the base module (its parameters are not saved);
    * ``load_base(config, **kwargs)``: classmethod building the base from ``config`` (its Hub id, local path,
      or ``preset:<name>``, and revision);
    * ``__init__(config, base_model=None)``: builds the head, and the base via ``load_base`` when not given;
    * ``model_card()``: returns a ``huggingface_hub.ModelCard``.
    """

    base_attr: str = "base"

    def head_state_dict(self) -> dict[str, torch.Tensor]:
        """The plugin's own tensors: the full ``state_dict`` minus everything under ``base_attr``."""
        prefix = self.base_attr + "."
        return {k: v for k, v in self.state_dict().items() if not k.startswith(prefix)}

    def save_pretrained(self, save_directory: str | os.PathLike, *, push_to_hub: bool = False, **kwargs) -> None:
        """Write ``config.json``, ``model.safetensors`` (head only) and ``README.md`` into ``save_directory``.

        ``state_dict`` / ``safe_serialization`` / ``max_shard_size`` keyword arguments (as passed by ``Trainer``)
        are accepted; a given ``state_dict`` is filtered to the head, and pickle is never used.
        """
        os.makedirs(save_directory, exist_ok=True)
        state = kwargs.get("state_dict")
        if state is not None:
            prefix = self.base_attr + "."
            state = {k: v for k, v in state.items() if not k.startswith(prefix)}
        else:
            state = self.head_state_dict()
        self.config.save_pretrained(save_directory)
        save_safetensors(state, Path(save_directory) / WEIGHTS_NAME)
        self.model_card().save(str(Path(save_directory) / "README.md"))
        if push_to_hub:
            repo_id = kwargs.get("repo_id") or Path(save_directory).name
            self.push_to_hub(repo_id, token=kwargs.get("token"))

    def push_to_hub(self, repo_id: str, *, private: Optional[bool] = None, token=None, revision: Optional[str] = None,
                    commit_message: Optional[str] = None, create_pr: bool = False, **_) -> str:
        """Upload head weights, config and model card to ``repo_id`` (created if missing)."""
        return push_folder_to_hub(self.save_pretrained, repo_id, private=private, token=token, revision=revision,
                                  commit_message=commit_message, create_pr=create_pr)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, config=None, base_model=None,
                        dtype: Optional[torch.dtype] = None, **kwargs):
        """Rebuild base + head from a directory or Hub repo written by :meth:`save_pretrained`.

        Args:
            pretrained_model_name_or_path: local directory or Hub repo id.
            config: an already loaded config (``AutoModel`` passes it).
            base_model: an already loaded base model to attach to instead of loading ``config``'s base.
            dtype: dtype for the head (and the base when it is loaded here); ``torch_dtype`` is accepted too.
            **kwargs: Hub arguments (``revision``, ``token``, ``cache_dir``, ``local_files_only``, ``subfolder``).

        Returns:
            The model in eval mode. Raises ``ValueError`` when the checkpoint's tensors do not match the head.
        """
        hub_kwargs = {k: kwargs.get(k) for k in _HUB_KWARGS if kwargs.get(k) is not None}
        dtype = dtype if dtype is not None else kwargs.get("torch_dtype")
        if isinstance(dtype, str) and dtype != "auto":
            dtype = getattr(torch, dtype)
        if dtype == "auto":
            dtype = None
        if config is None:
            config = cls.config_class.from_pretrained(pretrained_model_name_or_path, **hub_kwargs)
        if base_model is None:
            base_model = cls.load_base(config, dtype=dtype)
        model = cls(config, base_model=base_model)
        state = load_file(resolve_file(pretrained_model_name_or_path, WEIGHTS_NAME, **hub_kwargs))
        expected = model.head_state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            raise ValueError(
                f"{pretrained_model_name_or_path}: checkpoint does not match {cls.__name__}'s head: "
                f"missing {missing[:8]}, unexpected {unexpected[:8]}"
            )
        for k, v in state.items():
            if tuple(v.shape) != tuple(expected[k].shape):
                raise ValueError(f"{pretrained_model_name_or_path}: tensor {k} has shape {tuple(v.shape)}, "
                                 f"the model expects {tuple(expected[k].shape)}")
        model.load_state_dict(state, strict=False)
        if dtype is not None:
            for name, module in model.named_children():
                if name != cls.base_attr:
                    module.to(dtype)
        return model.eval()


PRESET_PREFIX = "preset:"


def load_reference_model(ref: str, model_cls=None, *, revision: Optional[str] = None,
                         dtype: Optional[torch.dtype] = None, **kwargs):
    """Load the base model a plugin config refers to.

    Args:
        ref: a Hub id (``"Salesforce/blip2-itm-vit-g"``), a local directory written by ``save_pretrained``, or
            ``"preset:<name>"`` for a randomly initialised preset architecture (seed 0; demos and tests).
        model_cls: transformers class used for Hub ids and directories (e.g. ``Blip2ForImageTextRetrieval``).
        revision: Hub revision (commit, branch or tag) of ``ref``.
        dtype: parameter dtype.
        **kwargs: forwarded to ``model_cls.from_pretrained``.

    Returns:
        The base model in eval mode.
    """
    if ref.startswith(PRESET_PREFIX):
        from .presets import build_from_preset

        return build_from_preset(ref[len(PRESET_PREFIX):], dtype=dtype)
    if model_cls is None:
        raise ValueError(f"model_cls: required to load {ref!r} (only 'preset:<name>' references need none)")
    extra = {"dtype": dtype} if dtype is not None else {}
    return model_cls.from_pretrained(ref, revision=revision, **extra, **kwargs).eval()
