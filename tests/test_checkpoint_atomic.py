"""A checkpoint is one unit: a kill -9 at any instant of a save leaves the old or the new one.

The kill test trains in real child processes that are killed with SIGKILL in the middle
of checkpoint saves, then resumes each run the way ``foundry train --resume`` does and
checks it ends exactly where a run that was never killed ends. The children come from
a fork server that imported torch once, so two dozen kills take seconds, not minutes.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import random
import shutil
import signal

import pytest
import torch

from llm_foundry import Trainer
from llm_foundry.config import load_config
from llm_foundry.models import MiniLLM, load_model_dir, save_model_dir
from llm_foundry.models.model_dir import STATE_FILE, recover_checkpoint_dir
from llm_foundry.training.state import FORMAT, load_state
from llm_foundry.utils.errors import FoundryError

from helpers import TINY_MODEL

STEPS = 6
# Small enough that the save (four files, fsyncs, renames) is most of each step.
KILL_CONFIG = ["model.dim=16", "model.n_layers=1", "model.n_heads=2", "model.max_seq_len=16", f"max_steps={STEPS}",
               "batch_size=2", "eval_interval=0", "eval_batches=1", "log_interval=1", "checkpoint_interval=1",
               "warmup_steps=1"]
# The file-system calls a save is made of; a kill lands just before one of them.
HOOKED = ("replace", "fsync", "link", "symlink", "mkdir", "unlink", "rmdir")


def _configs():
    return load_config("tiny", KILL_CONFIG)


def _child(data: str, out: str, kill_at: int, threads: int, conn) -> None:
    """Train from scratch into ``out``; at the ``kill_at``-th file-system call of the run, either die
    by SIGKILL right there (odd ``kill_at``) or tell the parent, which kills this process from
    outside a moment later, wherever it then is (even ``kill_at``). ``kill_at`` 0: count the calls."""
    torch.set_num_threads(threads)
    calls = 0

    def hook(real):
        def call(*args, **kwargs):
            nonlocal calls
            calls += 1
            if calls == kill_at:
                if kill_at % 2:
                    os.kill(os.getpid(), signal.SIGKILL)
                conn.send("kill me")
            return real(*args, **kwargs)
        return call

    for name in HOOKED:
        setattr(os, name, hook(getattr(os, name)))
    model_cfg, train_cfg = _configs()
    Trainer(model_cfg, train_cfg, data, out, quiet=True).run()
    conn.send(calls)


def _weights(folder) -> dict[str, torch.Tensor]:
    return load_model_dir(folder).model.state_dict()


@pytest.fixture(scope="module")
def fork_server():
    ctx = multiprocessing.get_context("forkserver")
    # torch._dynamo: the optimizers import it on first use, seconds a child would spend each time.
    ctx.set_forkserver_preload(["torch", "torch._dynamo", "llm_foundry.training.trainer", "llm_foundry.data"])
    return ctx


def _run_child(ctx, data, out, kill_at: int):
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_child, args=(str(data), str(out), kill_at, torch.get_num_threads(), child))
    proc.start()
    child.close()
    try:
        message = parent.recv()  # a count, or "kill me" (EOFError: it killed itself)
    except EOFError:
        message = None
    if message == "kill me":
        os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    return proc.exitcode, message


def test_kill_during_checkpoint_saves_leaves_a_resumable_run(fork_server, shakespeare_data, tmp_path):
    # The run never killed: its end, and how many file-system calls it makes.
    exitcode, calls = _run_child(fork_server, shakespeare_data, tmp_path / "reference", 0)
    assert exitcode == 0 and isinstance(calls, int) and calls > 2 * STEPS
    reference = _weights(tmp_path / "reference")
    rng = random.Random(0)
    trials = 24
    for trial in range(trials):
        out = tmp_path / f"run{trial}"
        # Odd points die right at a call, even ones a little after it; both spread over every save.
        kill_at = rng.randrange(1, calls + 1)
        exitcode, _ = _run_child(fork_server, shakespeare_data, out, kill_at)
        # (a kill from outside may come after a child that was at its very last save has finished)
        assert exitcode == -signal.SIGKILL or (exitcode == 0 and kill_at % 2 == 0), f"trial {trial}: exit {exitcode}"
        recover_checkpoint_dir(out)
        resume = (out / STATE_FILE).is_file()
        if resume:  # what is there is one checkpoint: weights and training state of the same step
            assert load_state(out / STATE_FILE).step == load_model_dir(out).step
        model_cfg, train_cfg = _configs()
        summary = Trainer(None if resume else model_cfg, train_cfg, shakespeare_data, out, resume=resume, quiet=True).run()
        assert summary["step"] == STEPS
        got = _weights(out)
        for name, tensor in reference.items():
            torch.testing.assert_close(got[name], tensor, rtol=0, atol=1e-6, msg=f"trial {trial} (kill at {kill_at}): {name}")
        leftovers = [p.name for p in out.iterdir() if p.name.startswith(".")]
        assert not leftovers, f"trial {trial}: {leftovers}"


# ----------------------------------------------------------------------------- old files, new files
def _old_layout(run, dst):
    """``run`` as the trainer wrote it before checkpoints were units: plain files, unversioned state."""
    shutil.copytree(run, dst)  # links become plain files
    shutil.rmtree(dst / "checkpoint")
    new = torch.load(run / STATE_FILE, weights_only=True)
    assert new["format"] == FORMAT
    old = {k: v for k, v in new.items() if k not in ("format", "extra")}
    old.update(new["extra"])  # tokens_seen, train_time, best_val lived at the top
    torch.save(old, dst / STATE_FILE)
    return dst


def test_old_format_run_folder_resumes_like_a_new_one(trained_run, shakespeare_data, tmp_path):
    old = _old_layout(trained_run, tmp_path / "old")
    new = tmp_path / "new"
    shutil.copytree(trained_run, new, symlinks=True)
    more = TINY_MODEL + ["max_steps=64", "batch_size=16", "eval_interval=0", "warmup_steps=10", "checkpoint_interval=0"]
    _, train_cfg = load_config("tiny", more)
    for folder in (old, new):
        assert Trainer(None, train_cfg, shakespeare_data, folder, resume=True, quiet=True).run()["step"] == 64
    torch.testing.assert_close(_weights(old), _weights(new), rtol=0, atol=0)
    # The old folder now has the unit layout: its names are links into checkpoint/.
    assert (old / "model.safetensors").is_symlink() and (old / "checkpoint" / STATE_FILE).is_file()
    assert load_state(old / STATE_FILE).extra["tokens_seen"] == load_state(new / STATE_FILE).extra["tokens_seen"]


def test_state_of_a_newer_version_is_a_one_line_error(trained_run, shakespeare_data, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    state = torch.load(run / STATE_FILE, weights_only=True)
    torch.save({**state, "format": FORMAT + 1}, run / STATE_FILE)
    _, train_cfg = load_config("tiny", TINY_MODEL + ["max_steps=70"])
    with pytest.raises(FoundryError, match="newer llm-foundry") as err:
        Trainer(None, train_cfg, shakespeare_data, run, resume=True, quiet=True).run()
    assert "\n" not in str(err.value)


# ----------------------------------------------------------------------------- the shared step
def test_two_micro_batches_equal_one_batch_of_both():
    from llm_foundry.config import ModelConfig
    from llm_foundry.training.step import StepParts, train_step

    cfg = ModelConfig(vocab_size=50, dim=32, n_layers=2, n_heads=4, max_seq_len=16)
    torch.manual_seed(0)
    x = torch.randint(0, 50, (8, 16))
    y = torch.randint(0, 50, (8, 16))
    results = []
    for micro in (1, 2):
        torch.manual_seed(1)
        model = MiniLLM(cfg)
        parts = StepParts(model, [torch.optim.SGD(model.parameters(), lr=0.5)], grad_clip=1.0)
        for g in parts.optimizers[0].param_groups:
            g["base_lr"] = g["lr"]
        size = len(x) // micro
        loss = train_step(parts, 1.0, micro, lambda i: model(x[i * size:(i + 1) * size], y[i * size:(i + 1) * size])[1])
        results.append((float(loss) / micro, {k: v.detach().clone() for k, v in model.state_dict().items()}))
    (loss_one, one), (loss_two, two) = results
    assert loss_one == pytest.approx(loss_two, abs=1e-5)
    torch.manual_seed(1)
    start = MiniLLM(cfg).state_dict()  # the weights both began from
    assert all(not torch.equal(one[k], start[k]) for k in one)  # every tensor stepped
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=0, atol=1e-5)


def test_stop_request_during_a_save_waits_for_it():
    """A second Ctrl-C in the middle of a save is delivered after it, never inside it."""
    from llm_foundry.utils.signals import deferred_signals

    seen = []
    previous = signal.signal(signal.SIGINT, lambda *_: seen.append("delivered"))
    try:
        with deferred_signals():
            os.kill(os.getpid(), signal.SIGINT)
            seen.append("save finished")
        assert seen == ["save finished", "delivered"]
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_replace_folder_recovers_each_interrupted_stage(tmp_path, monkeypatch, exchange):
    from llm_foundry.utils import io
    from llm_foundry.utils.io import recover_folder, replace_folder

    if not exchange:  # the portable path, as on a system without renameat2
        monkeypatch.setattr(io, "_renameat2", False)
    else:
        (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
        if not io._exchange(tmp_path / "a", tmp_path / "b"):
            pytest.skip("this system has no renameat2(RENAME_EXCHANGE)")
        (tmp_path / "a").rmdir(), (tmp_path / "b").rmdir()

    def content(text):
        return lambda folder: (folder / "f.txt").write_text(text)

    target = tmp_path / "m"
    replace_folder(target, content("old"))
    # Killed while writing the new folder: the old one stays.
    (tmp_path / ".m.tmp").mkdir()
    (tmp_path / ".m.tmp" / "f.txt").write_text("half")
    assert recover_folder(target) == target and (target / "f.txt").read_text() == "old"
    # Killed between the fallback's two renames: the complete new folder is taken.
    os.replace(target, tmp_path / ".m.old")
    (tmp_path / ".m.new").mkdir()
    (tmp_path / ".m.new" / "f.txt").write_text("new")
    assert recover_folder(target) == target and (target / "f.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    replace_folder(target, content("newer"))
    assert (target / "f.txt").read_text() == "newer" and sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_run_folder_is_a_model_folder_of_links(trained_run):
    """`foundry generate RUN` and `--init-from RUN` read the top-level names, which lead into checkpoint/."""
    for name in ("config.json", "model.safetensors", "tokenizer.json", STATE_FILE):
        assert (trained_run / name).is_symlink() and os.readlink(trained_run / name) == f"checkpoint/{name}"
    assert load_model_dir(trained_run).step == load_state(trained_run / STATE_FILE).step
    assert dataclasses.is_dataclass(load_model_dir(trained_run).model.cfg)


def test_a_reader_finishes_an_interrupted_save(trained_run, tmp_path):
    """Killed between the portable swap's two renames: `foundry generate RUN` reads the new checkpoint."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run, symlinks=True)
    step = load_model_dir(run).step
    shutil.copytree(run / "checkpoint", run / ".checkpoint.new")
    os.replace(run / "checkpoint", run / ".checkpoint.old")
    assert not (run / "config.json").exists()  # the links lead nowhere until the save is finished
    assert load_model_dir(run).step == step
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".checkpoint")) == []


def test_a_model_is_not_saved_over_a_run_folder(trained_run):
    bundle = load_model_dir(trained_run)
    with pytest.raises(FoundryError, match="is a training run folder"):
        save_model_dir(trained_run, bundle.model, bundle.tokenizer, step=bundle.step)


def test_without_symbolic_links_the_names_are_refreshed_after_each_save(trained_run, shakespeare_data, tmp_path,
                                                                        monkeypatch):
    """Where links cannot be made (Windows without the right to), the names at the top are hard links
    or copies that every save refreshes, and the run still resumes."""
    def no_symlinks(*args, **kwargs):
        raise OSError("symbolic links are not allowed here")

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)  # links followed: plain files, as a copy on such a system
    monkeypatch.setattr(os, "symlink", no_symlinks)
    more = TINY_MODEL + ["max_steps=70", "batch_size=16", "eval_interval=0", "warmup_steps=10", "checkpoint_interval=5"]
    _, train_cfg = load_config("tiny", more)
    assert Trainer(None, train_cfg, shakespeare_data, run, resume=True, quiet=True).run()["step"] == 70
    for name in ("config.json", "model.safetensors", "tokenizer.json", STATE_FILE):
        assert not (run / name).is_symlink() and (run / name).read_bytes() == (run / "checkpoint" / name).read_bytes()
    assert load_model_dir(run).step == load_state(run / STATE_FILE).step == 70
