"""What every example shares: its command line (`--tiny`, `--out`) and its output folder.

Kept out of the examples so each one reads as its own lesson; `python examples/0N_....py`
finds this file because Python puts the script's folder on the import path.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

MARKER = ".llm_foundry_example"


def example_parser(description: str, default_out: str, tiny_help: str = "a few-second smoke run") -> argparse.ArgumentParser:
    """A parser with the options every example takes; add your own before parsing."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--tiny", action="store_true", help=f"{tiny_help} (also: FOUNDRY_EXAMPLES_TINY=1)")
    p.add_argument("--out", default=default_out, help=f"output folder (default: {default_out}; replaced on re-run)")
    return p


def parse_example_args(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """Parse, letting the FOUNDRY_EXAMPLES_TINY environment variable switch on --tiny."""
    args = parser.parse_args(argv)
    args.tiny = args.tiny or os.environ.get("FOUNDRY_EXAMPLES_TINY", "") not in ("", "0")
    return args


def fresh_dir(path: Path) -> Path:
    """Empty ``path`` for this example; refuse to wipe a folder an example did not make."""
    if path.exists():
        if not (path / MARKER).exists() and any(path.iterdir()):
            sys.exit(f"error: {path} exists and was not made by an llm-foundry example; choose another --out")
        shutil.rmtree(path)
    path.mkdir(parents=True)
    (path / MARKER).touch()
    return path
