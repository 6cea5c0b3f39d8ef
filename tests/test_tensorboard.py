"""`train.tensorboard=true`: a run writes TensorBoard event files a user opens with `tensorboard --logdir RUN`.

The events are read back with TensorBoard's own reader (the ``track`` extra, part of the ``test`` extra).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import english_text, run_cli

MODEL = ["model.dim=32", "model.n_layers=1", "model.n_heads=2", "model.max_seq_len=32"]
TRAIN = ["device=cpu", "batch_size=2", "log_interval=2", "eval_interval=3", "eval_batches=1",
         "checkpoint_interval=0", "warmup_steps=1", "--quiet"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from llm_foundry.data import Document, prepare_dataset

    out = tmp_path_factory.mktemp("tb_data")
    prepare_dataset([Document(english_text(20_000), "pydoc")], "char", out, val_fraction=0.1, show_progress=False)
    return out


def scalars(run: Path) -> dict[str, dict[int, float]]:
    """Every scalar of the run's event files: tag -> step -> value (the last one written for a step)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    return {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}


def test_a_run_logs_loss_lr_throughput_grad_norm_and_eval_to_tensorboard(data, tmp_path):
    run = tmp_path / "run"
    proc = run_cli("train", "--data", data, "--out", run, *MODEL, *TRAIN, "max_steps=6", "tensorboard=true")
    assert proc.returncode == 0, proc.stderr
    got = scalars(run)
    assert {"train/loss", "train/lr", "train/tokens_per_s", "train/grad_norm", "val/loss"} <= got.keys(), got.keys()
    # The same numbers as metrics.jsonl, at the same steps.
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = {r["step"]: r for r in records if "loss" in r}
    assert sorted(got["train/loss"]) == sorted(train) == [2, 4, 6]
    for step, r in train.items():
        assert got["train/loss"][step] == pytest.approx(r["loss"], abs=1e-6)
        assert got["train/grad_norm"][step] == pytest.approx(r["grad_norm"], abs=1e-5)
        assert got["train/lr"][step] == pytest.approx(r["lr"])
    val = {r["step"]: r["val_loss"] for r in records if "val_loss" in r}
    assert got["val/loss"] == pytest.approx(val) and sorted(val) == [3, 6]


def test_a_resumed_run_goes_on_in_the_same_event_files(data, tmp_path):
    """Resumed from its step-4 checkpoint, a run logs steps 5.. (and drops any an earlier run logged after
    step 4): TensorBoard shows each step once, with metrics.jsonl's numbers."""
    run = tmp_path / "run"
    first = run_cli("train", "--data", data, "--out", run, *MODEL, *TRAIN, "max_steps=4", "tensorboard=true",
                    "schedule=constant")
    assert first.returncode == 0, first.stderr
    resumed = run_cli("train", "--data", data, "--out", run, "--resume", *MODEL, *TRAIN, "max_steps=8",
                      "tensorboard=true", "schedule=constant")
    assert resumed.returncode == 0, resumed.stderr
    got = scalars(run)
    assert sorted(got["train/loss"]) == [2, 4, 6, 8]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert got["train/loss"] == pytest.approx({r["step"]: r["loss"] for r in records if "loss" in r}, abs=1e-6)


def test_tensorboard_off_writes_no_events(data, tmp_path):
    run = tmp_path / "run"
    proc = run_cli("train", "--data", data, "--out", run, *MODEL, *TRAIN, "max_steps=2")
    assert proc.returncode == 0, proc.stderr
    assert not (run / "tensorboard").exists()


def test_report_plots_a_plain_train_run(data, tmp_path):
    """`foundry report RUN` on a `foundry train` run folder: its loss curve (train and held-out) as a PNG."""
    run = tmp_path / "run"
    proc = run_cli("train", "--data", data, "--out", run, *MODEL, *TRAIN, "max_steps=6")
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("report", run)
    assert proc.returncode == 0, proc.stderr
    report = (run / "report.md").read_text()
    assert "![pretrain](plots/pretrain_loss.png)" in report and "run_config.json" in report
    assert (run / "plots" / "pretrain_loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
