"""``vlplugins`` console script: ``env``, ``demo`` and one subcommand family per plugin.

Each plugin contributes ``vlplugins.<plugin>.cli.register(subparsers)``, which adds its family parser (e.g.
``hyperalign``) with sub-subcommands whose handlers are set with ``set_defaults(func=...)``. Plugin CLI
modules import heavy dependencies inside their handlers so ``vlplugins --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

PLUGIN_CLI_MODULES = (
    "vlplugins.hyperbolic_blip2.cli",
    "vlplugins.creal.cli",
    "vlplugins.hyperalign.cli",
    "vlplugins.contrastive_attention.cli",
)


def _cmd_env(args) -> int:
    import platform

    import torch

    def version(mod: str) -> str:
        try:
            m = importlib.import_module(mod)
        except Exception as err:  # noqa: BLE001 - report any import failure as "not importable"
            return f"not importable ({type(err).__name__})"
        return getattr(m, "__version__", "installed")

    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    def dist(name: str) -> str:
        try:
            return dist_version(name)
        except PackageNotFoundError:
            return "not installed"

    rows = [
        ("python", platform.python_version()),
        ("vlplugins", dist("vlplugins")),
        ("torch", torch.__version__),
        ("transformers", version("transformers")),
        ("peft", version("peft")),
        ("open_clip", dist("open_clip_torch")),
        ("salesforce-lavis", dist("salesforce-lavis")),
        ("cuda available", str(torch.cuda.is_available())),
        ("cuda devices", str(torch.cuda.device_count())),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k.ljust(width)}  {v}")
    return 0


def _cmd_demo(args) -> int:
    import torch

    from .demo import format_table, run

    torch.manual_seed(0)
    start = time.perf_counter()
    rows = run(Path(args.workdir), only=args.only)
    print()
    print(format_table(rows))
    print(f"\ntotal {time.perf_counter() - start:.1f} s; outputs in {args.workdir}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, including every plugin's subcommand family that is available."""
    parser = argparse.ArgumentParser(prog="vlplugins", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("env", help="print versions of torch/transformers/peft/lavis/open_clip and CUDA availability")
    p.set_defaults(func=_cmd_env)
    p = sub.add_parser("demo", help="train every plugin briefly on the synthetic shapes world vs its baseline (offline)")
    p.add_argument("--workdir", default=os.path.join(os.getcwd(), "demo_output"), help="where checkpoints and plots go")
    p.add_argument("--only", nargs="*", help="run only these plugins (e.g. creal hyperalign)")
    p.set_defaults(func=_cmd_demo)
    for name in PLUGIN_CLI_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name == name:
                continue
            raise
        module.register(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``vlplugins`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
