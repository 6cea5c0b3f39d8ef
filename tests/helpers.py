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


def overfit_on(model, tokenizer, messages: list[dict], steps: int = 150) -> float:
    """Train ``model`` (masked loss, AdamW 1e-2) on one conversation until it replays it; returns the last loss.

    A few seconds on a tiny model: greedy decoding then reproduces the reply, tool call
    included, through the real engine.
    """
    import torch

    from llm_foundry.data.chat import render_conversation

    ids, mask = render_conversation(tokenizer, messages)
    x = torch.tensor([ids[:-1]])
    y = torch.tensor([[t if m else -100 for t, m in zip(ids[1:], mask[1:])]])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(steps):
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return loss.item()
