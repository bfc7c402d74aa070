"""``vlplugins contrastive-attention analyze``: layer-masking curve, Hellinger matrix, i*, IA heatmap PNG + JSON."""

from __future__ import annotations


def register(subparsers) -> None:
    """Add the ``contrastive-attention`` family with its ``analyze`` subcommand."""
    family = subparsers.add_parser("contrastive-attention", help="contrastive attention for LLaVA (analysis tools)")
    sub = family.add_subparsers(dest="contrastive_attention_command", required=True)
    p = sub.add_parser("analyze", help="layer-wise image masking, attention maps, Hellinger matrix, i*, IA heatmap")
    p.add_argument("--model", required=True,
                   help="local LLaVA / LLaVA-NeXT directory (with its processor) or preset:<name> (random weights)")
    p.add_argument("--image", required=True, help="image file")
    p.add_argument("--prompt", required=True, help="question about the image")
    p.add_argument("--answer", default=None, help="answer whose log-probability is measured (default: greedy token)")
    p.add_argument("--config", default=None,
                   help="ContrastiveAttentionConfig directory / Hub id or preset:<name> (default: the model "
                        "preset's block, or LLaVA-1.5's layers rescaled to the model depth)")
    p.add_argument("--out", default="contrastive_attention_analysis", help="output directory")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_cmd_analyze)


def _cmd_analyze(args) -> int:
    import json
    from pathlib import Path

    import torch
    from PIL import Image

    from .analysis import analyze_layers, prepare_inputs, save_report
    from .generate import resolve_config

    dtype = getattr(torch, args.dtype)
    processor = None
    config = resolve_config(args.config, "--config") if args.config else None
    if args.model.startswith("preset:"):
        from vlplugins.hub import build_from_preset, preset_info

        name = args.model[len("preset:"):]
        model = build_from_preset(name, dtype=dtype, device=args.device)
        if config is None and (preset_info(name).get("plugin") or {}).get("contrastive_attention"):
            from .configuration import ContrastiveAttentionConfig

            config = ContrastiveAttentionConfig.from_preset(name)
    else:
        import transformers
        from transformers import AutoConfig, AutoProcessor

        arch = AutoConfig.from_pretrained(args.model).architectures[0]
        model = getattr(transformers, arch).from_pretrained(args.model, dtype=dtype).to(args.device).eval()
        processor = AutoProcessor.from_pretrained(args.model)
    image = Image.open(args.image).convert("RGB")
    inputs, answer_ids = prepare_inputs(model, image, args.prompt, processor=processor, answer=args.answer)
    analysis = analyze_layers(model, inputs, config=config, answer_ids=answer_ids)
    paths = save_report(analysis, Path(args.out), image=image, title=f"{args.model}: {args.prompt}")
    print(json.dumps({"i_star": analysis.i_star, "post_integration_layer": analysis.post_integration_layer,
                      "review_layer": analysis.review_layer, "base_logprob": round(analysis.base_logprob, 4),
                      "masking_delta": [round(v, 4) for v in analysis.masking_delta], **paths}))
    return 0
