"""Model cards (README.md with YAML metadata) for everything vlplugins saves or pushes."""

from __future__ import annotations

from typing import Iterable, Optional, Sequence

from huggingface_hub import ModelCard, ModelCardData

LIBRARY_NAME = "vlplugins"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence]) -> str:
    """A GitHub-flavoured markdown table; floats are printed with 4 significant digits."""

    def fmt(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def build_model_card(
    *,
    title: str,
    summary: str,
    usage: str,
    tags: Sequence[str] = (),
    base_model: Optional[str] = None,
    paper_url: Optional[str] = None,
    license: str = "apache-2.0",
    pipeline_tag: Optional[str] = None,
    eval_table: Optional[str] = None,
    extra_sections: Optional[dict] = None,
) -> ModelCard:
    """Build the card every plugin writes next to its weights.

    Args:
        title: card heading.
        summary: one paragraph on what the checkpoint is.
        usage: Python snippet (without fences) showing how to load and use it.
        tags: Hub tags; ``"vlplugins"`` is always added.
        base_model: Hub id of the model this plugin attaches to (``base_model`` metadata).
        paper_url: link to the paper, added to the metadata and the text.
        license: SPDX-like license id.
        pipeline_tag: Hub pipeline tag, if one fits.
        eval_table: markdown table of results, if any.
        extra_sections: ``{heading: markdown}`` appended in order.

    Returns:
        A ``huggingface_hub.ModelCard`` whose metadata has ``library_name: vlplugins``.
    """
    all_tags = [LIBRARY_NAME, *[t for t in tags if t != LIBRARY_NAME]]
    data = ModelCardData(library_name=LIBRARY_NAME, tags=all_tags, license=license, pipeline_tag=pipeline_tag)
    if base_model and not base_model.startswith(("preset:", "/", ".")):
        data.base_model = base_model
    body = [f"# {title}", "", summary, ""]
    if paper_url:
        body += [f"Paper: {paper_url}", ""]
        data.paper_url = paper_url  # kept in the YAML metadata too
    if base_model:
        body += [f"Base model: `{base_model}`", ""]
    body += ["## Usage", "", "```python", usage.strip(), "```", ""]
    if eval_table:
        body += ["## Evaluation", "", eval_table, ""]
    for heading, text in (extra_sections or {}).items():
        body += [f"## {heading}", "", text, ""]
    body += ["Saved with [vlplugins](https://pypi.org/project/vlplugins/); weights are safetensors, "
             "no `trust_remote_code` needed (`import vlplugins` registers the Auto classes).", ""]
    content = f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body)
    return ModelCard(content)
