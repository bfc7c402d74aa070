"""Configuration of contrastive attention (Song, Li, Yu 2026, arXiv 2601.08151) for LLaVA models.

Layer indices are **0-based decoder-layer indices** of the language model, i.e. the ``layer_idx`` of
``model.model.language_model.layers[layer_idx]`` in transformers (LLaVA-1.5-7B has layers 0..31).

Paper symbols: k = ``post_integration_layer``, r = ``review_layer``, C = ``candidate_layers``,
ρ = ``quantile``, λ = ``scale``, i* = argmax over C of Hellinger(A(i), A(k)).
"""

from __future__ import annotations

import math
import os
from typing import Optional, Sequence

from transformers import PreTrainedConfig

HEAD_REDUCTIONS = ("mean", "max")
QUERY_POSITIONS = ("last",)
SUPPORTED_MODEL_CLASSES = ("LlavaForConditionalGeneration", "LlavaNextForConditionalGeneration")
PRESETS = ("llava-1.5-7b", "llava-v1.6-vicuna-7b", "tiny-llava", "tiny-llava-next")


class ContrastiveAttentionConfig(PreTrainedConfig):
    r"""Hyperparameters of contrastive attention.

    The method, per sample, during the prefill of ``generate``:

    1. A(l) for l in C ∪ {k}: attention of the query position (the last prompt token, the one that predicts the
       first answer token) over the image-token keys at decoder layer l, reduced over heads
       (``head_reduction``) and renormalised to sum to 1 over that sample's image tokens; float32.
    2. i* = argmax_{i in C} H(A(i), A(k)) with the Hellinger distance H(P, Q) = ||√P − √Q||₂ / √2
       (or i* = ``pre_layer`` when it is set).
    3. IA = |A(k) − A(i*)| (one value per image token).
    4. At the input of decoder layer r, the residual-stream hidden state of every image token whose IA is below
       the sample's ρ-quantile of IA (``torch.quantile``, linear interpolation, over that sample's own image
       tokens) is multiplied by λ. Later decoding steps see the effect through the KV cache.

    Args:
        post_integration_layer (`int`): k, the layer where vision-language fusion has finished (0-based).
        review_layer (`int`): r, the layer whose input image states are scaled (0-based); must satisfy r > k.
        candidate_layers (`list[int]`): C, the "pre-integration" candidate layers (0-based); max(C) < k.
        quantile (`float`): ρ in (0, 1), the fraction of image tokens (lowest IA) that is down-weighted.
        scale (`float`): λ >= 0, the factor applied to the down-weighted image states (0 = hard mask,
            1 = no-op).
        head_reduction (`str`): ``"mean"`` (default, the paper's reading) or ``"max"`` over heads.
        query_position (`str`): ``"last"``: the last non-padding prompt token.
        pre_layer (`int` or `None`): ``None`` picks i* per sample from C; an int fixes i* (must be < k).
        base_model (`str` or `None`): optional Hub id of the model the values were chosen for (documentation
            only; written to the model card).
    """

    model_type = "contrastive_attention"

    def __init__(
        self,
        post_integration_layer: int = 28,
        review_layer: int = 29,
        candidate_layers: Optional[Sequence[int]] = None,
        quantile: float = 0.2,
        scale: float = 0.1,
        head_reduction: str = "mean",
        query_position: str = "last",
        pre_layer: Optional[int] = None,
        base_model: Optional[str] = None,
        **kwargs,
    ):
        self.post_integration_layer = post_integration_layer
        self.review_layer = review_layer
        self.candidate_layers = list(candidate_layers) if candidate_layers is not None else [2, 4, 8, 11, 12, 13]
        self.quantile = quantile
        self.scale = scale
        self.head_reduction = head_reduction
        self.query_position = query_position
        self.pre_layer = pre_layer
        self.base_model = base_model
        super().__init__(**kwargs)
        self.check()

    # ------------------------------------------------------------------ validation
    def check(self) -> None:
        """Validate the fields on their own (types, ranges, ordering); :meth:`validate` adds the model checks.

        Raises:
            ValueError: naming the field, the expected and the received value.
        """

        def is_int(v) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        for name in ("post_integration_layer", "review_layer"):
            v = getattr(self, name)
            if not is_int(v) or v < 0:
                raise ValueError(f"{name}: expected a non-negative int (0-based decoder layer), got {v!r}")
        k, r = self.post_integration_layer, self.review_layer
        if self.pre_layer is not None and (not is_int(self.pre_layer) or self.pre_layer < 0):
            raise ValueError(f"pre_layer: expected None or a non-negative int, got {self.pre_layer!r}")
        cands = self.candidate_layers
        if not all(is_int(c) and c >= 0 for c in cands):
            raise ValueError(f"candidate_layers: expected non-negative ints (0-based layers), got {cands!r}")
        if len(set(cands)) != len(cands):
            raise ValueError(f"candidate_layers: expected distinct layers, got {cands!r}")
        if self.pre_layer is None and not cands:
            raise ValueError("candidate_layers: expected at least one layer when pre_layer is None, got []")
        if not r > k:
            raise ValueError(f"review_layer: expected review_layer > post_integration_layer ({k}), got {r}")
        if cands and not k > max(cands):
            raise ValueError(f"candidate_layers: expected every layer < post_integration_layer ({k}), got {cands}")
        if self.pre_layer is not None and not self.pre_layer < k:
            raise ValueError(f"pre_layer: expected pre_layer < post_integration_layer ({k}), got {self.pre_layer}")
        q = self.quantile
        if not isinstance(q, (int, float)) or isinstance(q, bool) or not (0.0 < float(q) < 1.0):
            raise ValueError(f"quantile: expected rho in the open interval (0, 1), got {q!r}")
        s = self.scale
        if not isinstance(s, (int, float)) or isinstance(s, bool) or not math.isfinite(float(s)) or float(s) < 0:
            raise ValueError(f"scale: expected a finite lambda >= 0, got {s!r}")
        if self.head_reduction not in HEAD_REDUCTIONS:
            raise ValueError(f"head_reduction: expected one of {HEAD_REDUCTIONS}, got {self.head_reduction!r}")
        if self.query_position not in QUERY_POSITIONS:
            raise ValueError(f"query_position: expected one of {QUERY_POSITIONS}, got {self.query_position!r}")

    @property
    def probe_layers(self) -> list[int]:
        """Sorted layers whose attention rows are captured: C ∪ {k} (or {pre_layer, k})."""
        cands = [self.pre_layer] if self.pre_layer is not None else list(self.candidate_layers)
        return sorted(set(cands) | {self.post_integration_layer})

    def validate(self, model=None) -> None:
        """Check every field against ``model`` (the model contrastive attention is enabled on).

        Args:
            model: a ``LlavaForConditionalGeneration`` or ``LlavaNextForConditionalGeneration``; ``None`` only
                runs the model-independent checks (``PreTrainedConfig.save_pretrained`` calls ``validate()``).

        Raises:
            ValueError: unsupported model class, layer index out of ``[0, num_layers)``, or an invalid field.
        """
        self.check()
        if model is None:
            return
        names = [c.__name__ for c in type(model).__mro__]
        if not any(n in SUPPORTED_MODEL_CLASSES for n in names):
            raise ValueError(f"model: expected one of {SUPPORTED_MODEL_CLASSES} (or a subclass), "
                             f"got {type(model).__name__}")
        num_layers = model.config.text_config.num_hidden_layers
        layers = {"post_integration_layer": [self.post_integration_layer], "review_layer": [self.review_layer],
                  "candidate_layers": list(self.candidate_layers),
                  "pre_layer": [] if self.pre_layer is None else [self.pre_layer]}
        for name, values in layers.items():
            bad = [v for v in values if not 0 <= v < num_layers]
            if bad:
                raise ValueError(f"{name}: expected 0-based decoder layers in [0, {num_layers - 1}] for "
                                 f"{type(model).__name__} with {num_layers} layers, got {getattr(self, name)!r}")

    # ------------------------------------------------------------------ presets and the Hub
    @classmethod
    def from_preset(cls, name: str, **overrides) -> "ContrastiveAttentionConfig":
        """Config from the ``"plugin" -> "contrastive_attention"`` block of a ``hub_configs`` preset.

        Args:
            name: ``"llava-1.5-7b"``, ``"llava-v1.6-vicuna-7b"``, ``"tiny-llava"`` or ``"tiny-llava-next"``.
            **overrides: fields to override.
        """
        from vlplugins.hub import preset_info

        info = preset_info(name)
        block = (info.get("plugin") or {}).get("contrastive_attention")
        if block is None:
            raise ValueError(f"name: preset {name!r} has no plugin.contrastive_attention block; "
                             f"expected one of {PRESETS}")
        values = dict(block)
        values.setdefault("base_model", info.get("hub_id") or f"preset:{name}")
        values.update(overrides)
        return cls(**values)

    def save_pretrained(self, save_directory, push_to_hub: bool = False, **kwargs):
        """Write ``config.json``, ``custom_generate/generate.py``, ``custom_generate/requirements.txt`` and
        ``README.md`` (tagged ``custom_generate``) into ``save_directory``.

        The folder is usable as ``model.generate(..., custom_generate=save_directory, trust_remote_code=True)``;
        the generate.py embeds these values as its default config.
        """
        if push_to_hub:
            repo_id = kwargs.pop("repo_id", None) or os.path.basename(os.path.normpath(str(save_directory)))
            return self.push_to_hub(repo_id, token=kwargs.get("token"))
        os.makedirs(save_directory, exist_ok=True)
        super().save_pretrained(save_directory)
        from .hub_folder import write_custom_generate_folder

        write_custom_generate_folder(self, save_directory, repo_id=kwargs.get("repo_id"))

    def push_to_hub(self, repo_id: str, *, private: Optional[bool] = None, token=None,
                    revision: Optional[str] = None, commit_message: Optional[str] = None,
                    create_pr: bool = False, **_) -> str:
        """Upload config + ``custom_generate/`` + model card to ``repo_id`` (created if missing)."""
        from vlplugins.hub.checkpoint import push_folder_to_hub

        return push_folder_to_hub(lambda folder: self.save_pretrained(folder, repo_id=repo_id), repo_id,
                                  private=private, token=token, revision=revision,
                                  commit_message=commit_message or "Upload contrastive-attention config",
                                  create_pr=create_pr)
