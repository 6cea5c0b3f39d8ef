"""kill -9 at random instants: `foundry train --resume` and `foundry evolve` always continue.

Each trial starts the real command in a child process, waits for a randomly drawn point
of its progress (a number of logged steps, a number of printed lines), adds a random
sub-second jitter, and kills it with SIGKILL: no clean-up of any kind runs. The same
command is then run again (with ``--resume`` for `foundry train`) and must finish, and
what it leaves must load. `test_checkpoint_atomic.py` kills inside the file-system calls
of a save; these trials kill wherever the process happens to be, start-up included.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import pytest
import torch
from helpers import TINY_MODEL

from llm_foundry.models.model_dir import load_model_dir

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TIMEOUT = 300  # generous: a wait for a condition, never a measured window

TRAIN_STEPS = 24
TRAIN_ARGS = ["--quiet", *TINY_MODEL, "batch_size=4", f"max_steps={TRAIN_STEPS}", "log_interval=1",
              "eval_interval=8", "eval_batches=2", "checkpoint_interval=2", "warmup_steps=2"]


class Child:
    """A CLI command in a child process; its stdout lines are collected as they come."""

    def __init__(self, *args: str):
        self.proc = subprocess.Popen([sys.executable, "-m", "llm_foundry", *map(str, args)], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=ENV)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True)
        self._reader.start()

    def kill_when(self, reached: Callable[[], bool], rng: random.Random) -> int:
        """SIGKILL once ``reached()`` holds (plus a random jitter of up to 50 ms); returns the exit code
        (0 where the command finished first)."""
        deadline = time.monotonic() + TIMEOUT
        while not reached() and self.proc.poll() is None:
            assert time.monotonic() < deadline, "the child never reached the drawn point"
            time.sleep(0.005)
        time.sleep(rng.uniform(0, 0.05))
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=TIMEOUT)
        self._reader.join(timeout=TIMEOUT)
        self.proc.stdout.close()
        err = self.proc.stderr.read()
        self.proc.stderr.close()
        assert self.proc.returncode in (0, -signal.SIGKILL), err
        return self.proc.returncode


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llm_foundry", *map(str, args)], capture_output=True, text=True,
                          timeout=TIMEOUT, env=ENV)


def step_records(run_dir: Path) -> int:
    """How many per-step records ``metrics.jsonl`` holds (the progress a trial waits for)."""
    try:
        text = (run_dir / "metrics.jsonl").read_text(encoding="utf-8")
    except FileNotFoundError:
        return 0
    return text.count('"lr"')


@pytest.fixture(scope="module")
def reference(shakespeare_data, tmp_path_factory) -> Path:
    """The run that was never killed."""
    ref = tmp_path_factory.mktemp("reference") / "run"
    done = run("train", "--data", shakespeare_data, "--out", ref, *TRAIN_ARGS)
    assert done.returncode == 0, done.stderr
    return ref


def resume_and_check(data: Path, out: Path, reference: Path, what: str, *args: str) -> None:
    """`foundry train ... --resume` finishes, and the run folder loads and ends as ``reference`` ends."""
    resumed = run("train", "--data", data, "--out", out, *TRAIN_ARGS, *args, "--resume")
    assert resumed.returncode == 0, f"{what}: {resumed.stderr}"
    got = load_model_dir(out, with_tokenizer=False)  # the run folder loads
    assert got.step == TRAIN_STEPS, f"{what}: ended at step {got.step}"
    want = load_model_dir(reference, with_tokenizer=False).model.state_dict()
    for name, tensor in got.model.state_dict().items():  # the very weights of the run never killed
        torch.testing.assert_close(tensor, want[name], rtol=0, atol=1e-6, msg=f"{what}: {name}")
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
             if '"lr"' in line]
    assert steps == list(range(1, TRAIN_STEPS + 1)), f"{what}: logged steps {steps}"


def train_trials(data: Path, reference: Path, tmp_path: Path, trials: int, seed: int) -> None:
    rng = random.Random(seed)
    for trial in range(trials):
        out = tmp_path / f"run{trial}"
        # The drawn point: the run folder has appeared (0) or k steps are logged; then a jitter.
        k = rng.randint(0, TRAIN_STEPS)
        child = Child("train", "--data", data, "--out", out, *TRAIN_ARGS)
        code = child.kill_when(lambda: out.is_dir() and step_records(out) >= k, rng)
        resume_and_check(data, out, reference, f"trial {trial} (killed after {k} steps, exit {code})")
        shutil.rmtree(out)


def test_train_killed_at_random_instants_resumes(shakespeare_data, reference, tmp_path):
    train_trials(shakespeare_data, reference, tmp_path, trials=1, seed=1)


@pytest.mark.trials
def test_train_killed_at_random_instants_always_resumes_many_trials(shakespeare_data, reference, tmp_path):
    train_trials(shakespeare_data, reference, tmp_path, trials=20, seed=2)


def test_train_killed_before_its_first_checkpoint_resumes(shakespeare_data, reference, tmp_path):
    # Killed right after making the run folder: nothing in it yet.
    (tmp_path / "empty").mkdir()
    resume_and_check(shakespeare_data, tmp_path / "empty", reference, "an empty run folder")
    # Killed after some steps were logged, before any checkpoint (there is none until the end here).
    out = tmp_path / "run"
    child = Child("train", "--data", shakespeare_data, "--out", out, *TRAIN_ARGS, "checkpoint_interval=0")
    code = child.kill_when(lambda: step_records(out) >= 3, random.Random(0))
    assert code == -signal.SIGKILL and (out / "run_config.json").is_file()
    resume_and_check(shakespeare_data, out, reference, "killed after 3 steps", "checkpoint_interval=0")


# ------------------------------------------------------------------------ evolve
EVOLVE_ARGS = ["--cycles", "1", "--population", "2", "--cycle-steps", "4", "--mine-windows", "16",
               "--hard-keep", "4", "--self-samples", "2", "--quiet"]


@pytest.mark.trials
def test_evolve_killed_at_random_instants_reopens(tmp_path):
    from helpers import chinese_text

    from llm_foundry.evolve import load_stats
    from llm_foundry.evolve.state import StatePaths

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text(chinese_text(30_000), encoding="utf-8")
    state = tmp_path / "state"
    train = ["evolve", "--mode", "train", "--state", state, "--text", corpus, "--epochs", "2",
             "--steps-per-epoch", "3", "--log-every", "1", *TINY_MODEL, "lr=1e-3", "eval_batches=2"]
    done = run(*train)
    assert done.returncode == 0, done.stderr
    evolve = ["evolve", "--mode", "evolve", "--state", state, *EVOLVE_ARGS]
    rng = random.Random(3)
    paths = StatePaths(state)
    for trial in range(10):
        # Alternate the two modes that change the folder; draw the point from the files each writes.
        if trial % 3 == 2:
            k = rng.randint(0, 2)
            child = Child(*train, "--epochs", "4")
            log = paths.training_log
            code = child.kill_when(lambda: log.is_file() and len(json.loads(log.read_text() or "[]")) >= k, rng)
            again = run(*train, "--epochs", "4")
        else:
            k = rng.randint(0, 3)
            child = Child(*evolve)
            code = child.kill_when(lambda: paths.cycle_state.is_file() and len(_candidates(paths)) >= k, rng)
            again = run(*evolve)
        assert again.returncode == 0, f"trial {trial} (k={k}, exit {code}): {again.stderr}"
        stats = load_stats(paths.stats)  # the state opens
        assert stats["total_evolutions"] == stats["successful_evolutions"] + stats["failed_evolutions"]
        load_model_dir(paths.champion)  # and the champion loads
        assert not paths.cycle_state.exists()


def _candidates(paths) -> dict:
    try:
        return json.loads(paths.cycle_state.read_text(encoding="utf-8")).get("candidates", {})
    except (OSError, json.JSONDecodeError):
        return {}
