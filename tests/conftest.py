"""Shared fixtures: small prepared data folders and a trained tiny run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers import TINY_MODEL, english_text

# One OpenMP thread unless the caller chose otherwise (set before anything imports torch; the CLI
# subprocesses inherit it). The test models are tiny: a second thread costs more than it gains, and
# two spinning threads on a busy 2-core machine are many times slower (the 60-step `trained_run`
# below: 5.7 s with one thread, 15.4 s with two, on an idle 2-core machine).
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def shakespeare_data(tmp_path_factory) -> Path:
    """A char-level data folder of English: Python's reference documentation, ~460 KB.

    The name is historical (it was tinyshakespeare); the text comes with every Python, so
    the tests need nothing beside the checkout.
    """
    from llm_foundry.data import Document, prepare_dataset

    out = tmp_path_factory.mktemp("shakespeare_data")
    prepare_dataset([Document(english_text(), "pydoc_data.topics")], "char", out, val_fraction=0.1,
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



# The longest units of work, started first when the suite runs on several workers (`make test`):
# a long test begun last would keep one core busy while the other has nothing left to do.
LONG_FIRST = ("tests/test_lab_walk.py", "tests/test_lab_modules.py::TestModule16", "tests/test_lab_modules.py::TestModule08",
              "tests/test_lab_modules.py::TestModule10", "tests/test_lab_modules.py::TestModule14",
              "tests/test_lab_modules.py::TestModule06", "tests/test_lab_modules.py::TestModule07",
              "tests/test_memory_pipeline.py", "tests/test_lab_modules.py::TestModule", "tests/test_distributed.py")


def pytest_collection_modifyitems(config, items):
    if getattr(config, "workerinput", None) is None:  # one process: the order does not matter
        return

    def rank(item) -> int:
        return next((i for i, prefix in enumerate(LONG_FIRST) if item.nodeid.startswith(prefix)), len(LONG_FIRST))

    items.sort(key=rank)  # stable: within a rank, the collection order
