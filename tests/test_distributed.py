"""`foundry train` under torchrun: 2 processes on CPU (gloo, loopback), DDP and FSDP2.

Every run here is the real command, `python -m torch.distributed.run --nproc_per_node 2 -m llm_foundry
train ...` (what the `torchrun` script runs), as a subprocess on 127.0.0.1 and a free port. What a
user relies on:

* the config's batch is the global batch, so 2 processes train what 1 trains: the same losses;
* an interrupted run (SIGTERM to torchrun) saves a checkpoint that resumes on 1 process and on 2,
  and the loss trajectory goes on as if nothing had happened;
* the run folder is the usual model folder (a consolidated ``model.safetensors``), and rank 0 alone
  writes the logs.

Tolerance. The processes add the same gradients in another order (each its share, then an all-reduce)
than one process does (one running sum), so the float32 results differ in the last bits; AdamW divides by
the gradient's running RMS, which keeps such a difference at the level of float32 rounding rather than
letting it grow, over the few steps here. Observed: AdamW's equal to the 5 decimals metrics.jsonl keeps,
Muon's within 2e-5 (see below). Asserted:
1e-4 nats absolute, a hundred times finer than a loss moves in one step here (~1e-2), so a wrong batch
split, a missing gradient average or a lost optimizer moment (each moves a loss by 1e-3 or more) fails it.

The saved weights: AdamW's equal to 1e-5. Muon's Newton-Schulz iteration runs in bf16 (relative rounding
2^-8) and pushes small singular values up by a factor of ~3.4 per iteration, so a last-bit difference in
a gradient can flip bf16 roundings and move the update along such directions by a sizeable fraction of
itself (each element of an update is ~0.2 x muon_lr = 4e-3 in size). Under DDP Muon is PyTorch's own, on
whole matrices, with the same gradients up to their order of addition, so this is all that differs: over
6 steps the matrices differed by up to 1.2e-3. Asserted for Muon: 4e-3, about one step's update; the
losses (above) stay the strict check.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import english_text, run_cli

TOL = 1e-4
MODEL = ["model.dim=32", "model.n_layers=2", "model.n_heads=2", "model.max_seq_len=32"]
TRAIN = ["device=cpu", "log_interval=1", "eval_interval=0", "eval_batches=2", "checkpoint_interval=0", "--quiet"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from llm_foundry.data import Document, prepare_dataset

    out = tmp_path_factory.mktemp("dist_data")
    prepare_dataset([Document(english_text(60_000), "pydoc")], "char", out, val_fraction=0.1, show_progress=False)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_cmd(*args: str, nproc: int = 2) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
            "--master_addr", "127.0.0.1", "--master_port", str(free_port()), "-m", "llm_foundry", *map(str, args)]


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}


def torchrun(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(torchrun_cmd(*args), capture_output=True, text=True, timeout=300, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def losses(run: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "loss" in r]
    assert len({r["step"] for r in train}) == len(train), "a step logged twice: not only rank 0 writes"
    return {r["step"]: r["loss"] for r in train}


def assert_same_trajectory(got: dict[int, float], want: dict[int, float]) -> None:
    assert sorted(got) == sorted(want)
    worst = max(abs(got[s] - want[s]) for s in want)
    assert worst <= TOL, f"losses differ by {worst:.2e}: {got} vs {want}"


def saved_step(run: Path) -> int:
    from llm_foundry.models.model_dir import load_model_dir

    return load_model_dir(run).step


_reference: dict[tuple, Path] = {}


def single_process(data: Path, tmp_path_factory, settings: list[str]) -> Path:
    """The one-process run of these settings (each made once per module)."""
    key = tuple(settings)
    if key not in _reference:
        out = tmp_path_factory.mktemp("single") / "run"
        proc = run_cli("train", "--data", data, "--out", out, *MODEL, *TRAIN, *settings)
        assert proc.returncode == 0, proc.stderr
        _reference[key] = out
    return _reference[key]


CASES = [
    # (parallel, settings, on 2 processes only): micro-batches split (grad_accum 2 over 2), or each micro-batch's
    # rows (grad_accum 1); activation checkpointing changes no loss, so its 2-process run is held to a plain one.
    pytest.param("ddp", ["optimizer=adamw", "batch_size=4", "grad_accum=2", "ema_decay=0.9"], [], id="ddp-adamw-ema"),
    pytest.param("fsdp", ["optimizer=muon", "batch_size=4", "grad_accum=1"], ["activation_checkpointing=true"],
                 id="fsdp-muon-rows-ac"),
    pytest.param("ddp", ["optimizer=muon", "batch_size=2", "grad_accum=4"], [], id="ddp-muon", marks=pytest.mark.slow),
    pytest.param("fsdp", ["optimizer=adamw", "batch_size=4", "grad_accum=2", "ema_decay=0.9"], [], id="fsdp-adamw-ema",
                 marks=pytest.mark.slow),
]


@pytest.mark.parametrize("parallel,settings,two_only", CASES)
def test_two_processes_train_what_one_trains(data, tmp_path, tmp_path_factory, parallel, settings, two_only):
    """Same global batch on 1 and on 2 processes: the same losses, the same saved model."""
    from llm_foundry.models.model_dir import load_model_dir

    steps = ["max_steps=6", "warmup_steps=2"]
    one = single_process(data, tmp_path_factory, [*settings, *steps])
    two = tmp_path / "two"
    proc = torchrun("train", "--data", data, "--out", two, *MODEL, *TRAIN, *settings, *steps, *two_only,
                    f"parallel={parallel}")
    assert_same_trajectory(losses(two), losses(one))
    # Rank 0 alone talks: one summary line, not one per process.
    assert (proc.stdout + proc.stderr).count(f"saved {two}") == 1
    # The run folder is the model folder every command reads: the whole model, in one safetensors file.
    assert (two / "checkpoint" / "state.dcp").is_dir() and not (two / ".state.dcp-staging").exists()
    a, b = load_model_dir(one).model.state_dict(), load_model_dir(two).model.state_dict()
    atol = 4e-3 if "optimizer=muon" in settings else 1e-5
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=atol) for k in a)
    json.loads((two / "run_config.json").read_text())  # written once, whole


def test_interrupted_run_resumes_on_one_and_on_two_processes(data, tmp_path):
    """SIGTERM to torchrun: every process stops at the same step and the checkpoint is saved (DCP,
    sharded); resumed on 1 process and on 2, the losses are those of a run never interrupted.

    The constant schedule makes the lr independent of max_steps, so the interrupted run can be
    told to go on (almost) forever and the resumed ones to stop a few steps after the save."""
    settings = [*MODEL, *TRAIN, "optimizer=adamw", "batch_size=4", "grad_accum=2", "ema_decay=0.9",
                "schedule=constant", "warmup_steps=0"]
    run = tmp_path / "run"
    cmd = torchrun_cmd("train", "--data", data, "--out", run, *settings, "parallel=fsdp", "max_steps=1000000")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        deadline = time.monotonic() + 240
        while not ((run / "metrics.jsonl").exists() and len(losses(run)) >= 3):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    stopped = saved_step(run)
    assert stopped >= 3 and "continue with --resume" in err, err[-3000:]
    assert max(losses(run)) <= stopped
    end = stopped + 3
    on_two = tmp_path / "on_two"
    shutil.copytree(run, on_two, symlinks=True)

    resumed = run_cli("train", "--data", data, "--out", run, "--resume", *settings, f"max_steps={end}")
    assert resumed.returncode == 0, resumed.stderr
    torchrun("train", "--data", data, "--out", on_two, "--resume", *settings, "parallel=fsdp", f"max_steps={end}")
    reference = tmp_path / "reference"
    proc = run_cli("train", "--data", data, "--out", reference, *settings, f"max_steps={end}")
    assert proc.returncode == 0, proc.stderr
    want = losses(reference)
    assert_same_trajectory(losses(run), want)
    assert_same_trajectory(losses(on_two), want)
    assert saved_step(run) == saved_step(on_two) == end


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["fsdp", "ddp"])
def test_a_one_process_checkpoint_resumes_on_two(data, tmp_path, parallel):
    """A run saved by one process (plain training_state.pt) goes on under torchrun: loaded whole into
    every process (DDP) or scattered into the shards (FSDP), with the losses of a run never stopped."""
    settings = [*MODEL, *TRAIN, "optimizer=adamw", "batch_size=4", "grad_accum=2", "ema_decay=0.9",
                "schedule=constant", "warmup_steps=0"]
    run = tmp_path / "run"
    first = run_cli("train", "--data", data, "--out", run, *settings, "max_steps=3")
    assert first.returncode == 0, first.stderr
    torchrun("train", "--data", data, "--out", run, "--resume", *settings, f"parallel={parallel}", "max_steps=6")
    reference = tmp_path / "reference"
    proc = run_cli("train", "--data", data, "--out", reference, *settings, "max_steps=6")
    assert proc.returncode == 0, proc.stderr
    assert_same_trajectory(losses(run), losses(reference))
    assert saved_step(run) == 6


def test_a_global_batch_that_does_not_split_is_one_line(data, tmp_path):
    proc = subprocess.run(torchrun_cmd("train", "--data", data, "--out", tmp_path / "run", *MODEL, *TRAIN,
                                       "batch_size=3", "grad_accum=1", "max_steps=2"),
                          capture_output=True, text=True, timeout=300, env=ENV)
    assert proc.returncode != 0
    assert "error: the global batch (train.batch_size 3 x train.grad_accum 1) does not split over 2" in proc.stderr


@pytest.mark.slow
def test_an_sft_stage_under_torchrun_trains_what_one_process_trains(tmp_path):
    """`foundry sft` shares the Trainer: under torchrun it splits the same global batch, with the same losses."""
    from llm_foundry import Trainer
    from llm_foundry.config import load_config
    from llm_foundry.data import builtin_corpus, prepare_dataset

    # A byte-level model (the byte tokenizer reserves the chat tokens), pretrained two steps.
    prepare_dataset(builtin_corpus()[:4], "byte", tmp_path / "data", val_fraction=0.1, show_progress=False)
    model_cfg, train_cfg = load_config("tiny", [*MODEL[:3], "model.max_seq_len=192", "max_steps=2", "batch_size=2",
                                                "eval_batches=1", "checkpoint_interval=0", "device=cpu"])
    Trainer(model_cfg, train_cfg, tmp_path / "data", tmp_path / "base", quiet=True).run()
    common = ["--mix", "arithmetic=1,spelling=1", "--quiet", "--max-steps", "4", "examples_per_task=30",
              "val_examples=4", "batch_size=2", "grad_accum=2", "warmup_steps=1", "eval_batches=1", "log_interval=1",
              "device=cpu"]
    one = run_cli("sft", tmp_path / "base", "--out", tmp_path / "one", *common)
    assert one.returncode == 0, one.stderr
    torchrun("sft", tmp_path / "base", "--out", tmp_path / "two", *common)
    assert_same_trajectory(losses(tmp_path / "two"), losses(tmp_path / "one"))


@pytest.mark.slow
def test_one_process_under_torchrun_wraps_and_trains_the_same(data, tmp_path, tmp_path_factory):
    """`torchrun --nproc_per_node 1`: a process group of one, the model under FSDP (what a one-GPU
    benchmark compares), the same losses as without torchrun and a DCP checkpoint."""
    settings = ["optimizer=muon", "batch_size=4", "grad_accum=1", "max_steps=6", "warmup_steps=2"]
    one = single_process(data, tmp_path_factory, settings)
    run = tmp_path / "run"
    cmd = torchrun_cmd("train", "--data", data, "--out", run, *MODEL, *TRAIN, *settings, "parallel=fsdp", nproc=1)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_trajectory(losses(run), losses(one))
    assert (run / "checkpoint" / "state.dcp").is_dir()


@pytest.mark.slow
def test_rl_under_torchrun_trains_what_one_process_trains(tmp_path):
    """`foundry rl` on 2 processes: each rolls out half of a step's prompts, with the seeds one process
    would use, and the loss is normalised by both processes' tokens: the same rewards (sampling from the
    same weights with the same seeds) and the same losses (TOL, as above); rank 0 alone writes."""
    from llm_foundry import Trainer
    from llm_foundry.config import load_config
    from llm_foundry.data import builtin_corpus, prepare_dataset

    prepare_dataset(builtin_corpus()[:4], "byte", tmp_path / "data", val_fraction=0.1, show_progress=False)
    model_cfg, train_cfg = load_config("tiny", [*MODEL[:3], "model.max_seq_len=192", "max_steps=2", "batch_size=2",
                                                "eval_batches=1", "checkpoint_interval=0", "device=cpu"])
    Trainer(model_cfg, train_cfg, tmp_path / "data", tmp_path / "base", quiet=True).run()
    # count_letters: small numbers, which a barely trained byte model sometimes samples (a reward to learn from)
    common = ["--tasks", "count_letters", "--steps", "3", "--prompts-per-step", "4", "--group-size", "4", "--kl-coef", "0.1",
              "max_tokens=16", "examples=20", "eval_examples=2", "eval_samples=2", "lr=1e-3", "checkpoint_interval=0",
              "temperature=1.0", "device=cpu", "--quiet"]
    one = run_cli("rl", tmp_path / "base", "--out", tmp_path / "one", *common)
    assert one.returncode == 0, one.stderr
    torchrun("rl", tmp_path / "base", "--out", tmp_path / "two", *common)

    def records(run: Path) -> list[dict]:
        return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]

    got, want = records(tmp_path / "two"), records(tmp_path / "one")
    assert [r["step"] for r in got] == [r["step"] for r in want] == [1, 2, 3]  # one writer
    assert [r["reward"] for r in got] == [r["reward"] for r in want]
    assert_same_trajectory({r["step"]: r["loss"] for r in got}, {r["step"]: r["loss"] for r in want})
    assert any(r["loss"] != 0 for r in want), "no step learned: the comparison would prove nothing"
    assert saved_step(tmp_path / "two") == 3
    assert json.loads((tmp_path / "two" / "rl_eval.json").read_text())["after_step"] == 3

    # 2 steps on 2 processes, the third on 1: the run goes on as if uninterrupted
    cut = [a if a != "3" else "2" for a in common]
    torchrun("rl", tmp_path / "base", "--out", tmp_path / "cut", *cut)
    resumed = run_cli("rl", tmp_path / "base", "--out", tmp_path / "cut", "--resume", "--steps", "3", "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    got = records(tmp_path / "cut")
    assert [r["reward"] for r in got] == [r["reward"] for r in want]
    assert_same_trajectory({r["step"]: r["loss"] for r in got}, {r["step"]: r["loss"] for r in want})


def test_commands_that_run_in_one_process_refuse_torchrun(tmp_path):
    """speedrun chains stages in one process: under torchrun (WORLD_SIZE > 1) one line, not N writers."""
    from helpers import one_line_error

    env = {"WORLD_SIZE": "2", "RANK": "0"}
    one_line_error(run_cli("speedrun", "--out", tmp_path / "sr", env=env), "foundry speedrun runs in one process")


@pytest.mark.parametrize("device,message", [("cuda:1", "each process takes the GPU of its LOCAL_RANK"),
                                            ("mps", "runs on cuda or cpu, not mps")])
def test_a_device_torchrun_cannot_use_is_one_line(data, tmp_path, device, message):
    from helpers import one_line_error

    env = {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}  # refused before any process group is joined
    one_line_error(run_cli("train", "--data", data, "--out", tmp_path / "run", *MODEL, f"device={device}", env=env),
                   message)
