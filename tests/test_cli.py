"""CLI: help lists the subcommands, env prints versions, the console script is installed."""

import shutil
import subprocess
import sys

import torch

from vlplugins.cli import build_parser, main
from vlplugins.demo import DemoRow, format_table


def test_help_lists_core_subcommands(capsys):
    parser = build_parser()
    text = parser.format_help()
    for cmd in ("env", "demo"):
        assert cmd in text


def test_env_prints_versions(capsys):
    assert main(["env"]) == 0
    out = capsys.readouterr().out
    assert f"torch             {torch.__version__}" in out or torch.__version__ in out
    assert "transformers" in out and "peft" in out and "open_clip" in out and "salesforce-lavis" in out
    assert "cuda available" in out


def test_console_script_installed():
    exe = shutil.which("vlplugins") or str(__import__("pathlib").Path(sys.executable).parent / "vlplugins")
    res = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "demo" in res.stdout


def test_demo_table_format():
    table = format_table([DemoRow("creal", "mR@50", 0.5, 0.25, 3.0), DemoRow("x", "y", 1.0, None, 0.5)])
    lines = table.splitlines()
    assert lines[0].split() == ["plugin", "metric", "plugin", "baseline", "seconds"]
    assert lines[2].split() == ["creal", "mR@50", "0.5000", "0.2500", "3.0"]
    assert lines[3].split() == ["x", "y", "1.0000", "-", "0.5"]
