"""Helpers shared by the test modules (import as `from helpers import ...`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def shared_file(rel: str) -> Path:
    path = SHARED_DATA / rel
    if not path.is_file():
        pytest.skip(f"shared corpus not available: {path}")
    return path


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python -m llm_foundry ARGS` as a user would; returns the finished process."""
    return subprocess.run([sys.executable, "-m", "llm_foundry", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


TINY_MODEL = ["model.dim=64", "model.n_layers=2", "model.n_heads=4", "model.max_seq_len=64"]


def one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    """Assert a CLI run failed with one `error:` line on stderr, no traceback, naming ``fragments``."""
    assert proc.returncode != 0, proc.stdout
    err = proc.stderr.strip()
    assert err.startswith("error:") and "\n" not in err and "Traceback" not in err, err
    for f in fragments:
        assert f in err, err
