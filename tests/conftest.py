"""Shared fixtures: small prepared data folders and a trained tiny run."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import TINY_MODEL, english_text


@pytest.fixture(scope="session")
def shakespeare_data(tmp_path_factory) -> Path:
    """A char-level data folder of 200 KB of English (Python's reference documentation).

    The name is historical (it was tinyshakespeare); the text is generated here, so the
    tests need nothing beside the checkout.
    """
    from llm_foundry.data import Document, prepare_dataset

    out = tmp_path_factory.mktemp("shakespeare_data")
    prepare_dataset([Document(english_text(200_000), "pydoc_data.topics")], "char", out, val_fraction=0.1,
                    show_progress=False)
    return out


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, shakespeare_data) -> Path:
    """A run folder with a tiny model trained for a few dozen steps."""
    from llm_foundry import Trainer
    from llm_foundry.config import load_config

    out = tmp_path_factory.mktemp("trained_run")
    model_cfg, train_cfg = load_config("tiny", TINY_MODEL + ["max_steps=60", "batch_size=16", "eval_interval=30",
                                                             "warmup_steps=10", "checkpoint_interval=0"])
    Trainer(model_cfg, train_cfg, shakespeare_data, out, quiet=True).run()
    return out
