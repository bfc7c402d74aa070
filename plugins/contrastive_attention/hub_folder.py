"""The Hub folder layout written by :meth:`ContrastiveAttentionConfig.save_pretrained`.

```
config.json                      # ContrastiveAttentionConfig (model_type "contrastive_attention")
custom_generate/generate.py      # generate(model, *args, **kwargs): transformers' custom_generate entry point
custom_generate/requirements.txt # checked by transformers before loading generate.py
README.md                        # model card tagged custom_generate
```
Usable as ``model.generate(**inputs, custom_generate="<dir or user/repo>", trust_remote_code=True)``; the values of
the saved config are embedded in generate.py as its default, and ``contrastive_attention=...`` overrides them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

GENERATE_TEMPLATE = '''"""custom_generate entry point: contrastive attention for LLaVA (vlplugins).

Load with ``model.generate(**inputs, custom_generate="<this repo or folder>", trust_remote_code=True)``.
Pass ``contrastive_attention=<ContrastiveAttentionConfig or dict>`` to override the values saved below.
Paper: Song, Li, Yu, "Where Does Vision Meet Language?" (arXiv 2601.08151). Layer indices are 0-based.
"""

import json

from vlplugins.contrastive_attention.generate import generate as _contrastive_attention_generate

# Written by ContrastiveAttentionConfig.save_pretrained; the config this folder was saved from.
DEFAULT_CONFIG = json.loads(r"""__CONFIG_JSON__""")


def generate(model, *args, contrastive_attention=None, **kwargs):
    """Run ``model.generate`` with contrastive attention installed for the prefill (see vlplugins docs)."""
    if contrastive_attention is None:
        contrastive_attention = dict(DEFAULT_CONFIG)
    return _contrastive_attention_generate(model, *args, contrastive_attention=contrastive_attention, **kwargs)
'''

REQUIREMENTS = "vlplugins>=0.1.0\ntransformers>=5.0.0\ntorch>=2.1\n"

CONFIG_FIELDS = ("post_integration_layer", "review_layer", "candidate_layers", "quantile", "scale",
                 "head_reduction", "query_position", "pre_layer")


def write_custom_generate_folder(config, save_directory, repo_id=None) -> None:
    """Write ``custom_generate/generate.py``, ``custom_generate/requirements.txt`` and ``README.md``.

    Args:
        config: the :class:`~.configuration.ContrastiveAttentionConfig`.
        save_directory: target folder.
        repo_id: Hub repo the folder is pushed to (used in the card's usage snippet; default: the folder name).
    """
    from vlplugins.hub.cards import build_model_card, markdown_table

    root = Path(save_directory)
    folder = root / "custom_generate"
    os.makedirs(folder, exist_ok=True)
    values = {name: getattr(config, name) for name in CONFIG_FIELDS}
    text = GENERATE_TEMPLATE.replace("__CONFIG_JSON__", json.dumps(values, sort_keys=True))
    (folder / "generate.py").write_text(text, encoding="utf-8")
    (folder / "requirements.txt").write_text(REQUIREMENTS, encoding="utf-8")
    name = repo_id or root.name
    base = getattr(config, "base_model", None)
    if not base or base.startswith("preset:"):
        base = "llava-hf/llava-1.5-7b-hf"
    model_cls = "LlavaNextForConditionalGeneration" if "v1.6" in base or "next" in base.lower() else \
        "LlavaForConditionalGeneration"
    usage = (
        f"from transformers import {model_cls}\n"
        f"model = {model_cls}.from_pretrained(\"{base}\")\n"
        f"out = model.generate(**inputs, max_new_tokens=32, custom_generate=\"{name}\", trust_remote_code=True)\n"
        "# or, without remote code:\n"
        "from vlplugins.contrastive_attention import ContrastiveAttentionConfig, enable_contrastive_attention\n"
        f"cfg = ContrastiveAttentionConfig.from_pretrained(\"{name}\")\n"
        "with enable_contrastive_attention(model, cfg):\n"
        "    out = model.generate(**inputs, max_new_tokens=32)"
    )
    table = markdown_table(["field", "value"], [(k, json.dumps(v)) for k, v in values.items()])
    card = build_model_card(
        title="Contrastive attention (custom_generate) for LLaVA",
        summary=("Training-free contrastive attention: during the prefill, the image-token hidden states whose "
                 "attention shift |A(k) - A(i*)| between the post-integration layer k and the most different "
                 "candidate layer i* is below the rho-quantile are scaled by lambda at the review layer r. "
                 "Layer indices are 0-based decoder layers. This repo holds the configuration and a "
                 "`custom_generate/generate.py` entry point."),
        usage=usage,
        tags=["custom_generate", "contrastive-attention", "llava", "image-text-to-text"],
        base_model=getattr(config, "base_model", None),
        paper_url="https://arxiv.org/abs/2601.08151",
        extra_sections={
            "Configuration": table,
            "custom_generate arguments": ("`contrastive_attention` (optional): a `ContrastiveAttentionConfig` or a "
                                          "dict of the fields above; defaults to the values saved in this repo. "
                                          "Works with greedy search, sampling and beam search."),
        },
    )
    card.save(str(root / "README.md"))
