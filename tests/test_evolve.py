"""H2Q-Evo: local training, the accept/reject gate, stats across restarts, resume, inference."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import TINY_MODEL, chinese_text, one_line_error, run_cli

from llm_foundry.cli.evolve import evolve_train_options
from llm_foundry.cli.main import build_parser
from llm_foundry.config import load_config

ENV = {"OMP_NUM_THREADS": "1"}
FAST_TRAIN = ["--epochs", "2", "--steps-per-epoch", "4", "--log-every", "2", *TINY_MODEL, "lr=1e-3", "eval_batches=4"]
FAST_EVOLVE = ["--cycle-steps", "6", "--mine-windows", "32", "--hard-keep", "8", "--self-samples", "2"]


def evolve(*args, **kw) -> subprocess.CompletedProcess:
    """`foundry evolve ARGS` in a fresh process, as a user runs it."""
    return run_cli("evolve", *args, env=ENV, **kw)


class Result:
    def __init__(self, returncode: int, stdout: str, stderr: str):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture
def cli(capsys):
    """`foundry evolve ARGS` through the real entry point, in this process (no torch import per call)."""
    from llm_foundry.cli.main import main

    def call(*args) -> Result:
        capsys.readouterr()
        code = main(["evolve", *map(str, args)])
        out, err = capsys.readouterr()
        return Result(code, out, err)

    return call


def folder_bytes(path: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.iterdir())}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    text = chinese_text(70_000)
    (folder / "nested").mkdir()
    (folder / "a.txt").write_text(text[:40_000], encoding="utf-8")
    (folder / "nested" / "b.txt").write_text(text[40_000:70_000], encoding="utf-8")
    (folder / "ignored.md").write_text("not a .txt file", encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def trained(tmp_path_factory, corpus) -> Path:
    state = tmp_path_factory.mktemp("trained") / "state"
    proc = evolve("--mode", "train", "--state", state, "--data_dir", corpus, *FAST_TRAIN)
    assert proc.returncode == 0, proc.stderr
    return state


def copy_state(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "state"
    shutil.copytree(src, dst)
    return dst


def test_h2q_preset_is_the_source_model():
    model, train = load_config("h2q")
    assert (model.dim, model.n_heads, model.n_layers, model.max_seq_len) == (256, 8, 6, 512)
    assert (train.lr, train.batch_size, train.grad_clip, train.schedule) == (1e-4, 8, 1.0, "cosine")
    assert train.warmup_steps > 0


def test_source_flags_and_kebab_aliases():
    parser = build_parser()
    a = parser.parse_args(["evolve", "--mode", "train", "--data_dir", "x", "--epochs", "5"])
    b = parser.parse_args(["evolve", "--mode", "train", "--data-dir", "x", "--epochs", "5"])
    assert a.data_dir == b.data_dir == "x" and a.epochs == b.epochs == 5
    c = parser.parse_args(["evolve", "--mode", "evolve", "--cycles", "3"])
    assert c.cycles == 3 and c.state == "h2q_state"
    d = parser.parse_args(["evolve"])
    opts = evolve_train_options(d)  # a flag left out is None; its default lives in TrainOptions
    assert d.mode == "train" and opts.data_dir == "data/training_data" and opts.epochs == 10 and opts.tokenizer == "byte"


def test_train_writes_log_checkpoints_best_and_champion(trained, corpus):
    log = json.loads((trained / "training_log.json").read_text(encoding="utf-8"))
    assert [e["epoch"] for e in log] == [1, 2]
    for e in log:
        assert {"epoch", "train_loss", "eval_loss", "perplexity", "epoch_time", "total_time"} <= set(e)
    assert log[1]["total_time"] >= log[1]["epoch_time"]
    for name in ("champion", "best", "checkpoints/epoch_001", "checkpoints/epoch_002"):
        assert (trained / name / "model.safetensors").is_file(), name
    settings = json.loads((trained / "settings.json").read_text(encoding="utf-8"))
    assert settings["tokenizer"] == "byte" and settings["model"]["dim"] == 64
    split = json.loads((trained / "data" / "split.json").read_text(encoding="utf-8"))
    assert len(split["sources"]) == 2  # a.txt and nested/b.txt, not ignored.md
    assert (trained / "data" / "test.txt").is_file()


def test_train_console_output_and_fixed_split(trained, corpus, tmp_path, cli):
    state = copy_state(trained, tmp_path)
    split_before = folder_bytes(state / "data")
    (corpus / "new.txt").write_text("新的文字。" * 200, encoding="utf-8")
    try:
        proc = cli("--mode", "train", "--state", state, "--data-dir", corpus, "--epochs", "1",
                      "--steps-per-epoch", "3", "--log-every", "1", "lr=1e-3")
    finally:
        (corpus / "new.txt").unlink()
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "Epoch 1/1" in out and "batch    0 | loss:" in out and "perplexity:" in out and "LR:" in out
    assert "eval loss:" in out and "training done" in out and "final perplexity" in out
    assert "fixed split is kept" in out
    assert folder_bytes(state / "data") == split_before  # the held-out split never changes


def test_empty_folder_gets_sample_data(tmp_path, cli):
    data = tmp_path / "training_data"
    proc = cli("--mode", "train", "--state", tmp_path / "s", "--data_dir", data, "--epochs", "1",
                  "--steps-per-epoch", "2", *TINY_MODEL, "eval_batches=2")
    assert proc.returncode == 0, proc.stderr
    assert "had no .txt files; created sample data" in proc.stdout
    assert [p.name for p in data.glob("*.txt")] == ["sample_data.txt"]
    test_text = (tmp_path / "s" / "data" / "test.txt").read_text(encoding="utf-8")
    assert "人工智能" in (data / "sample_data.txt").read_text(encoding="utf-8")
    assert any("\u4e00" <= ch <= "\u9fff" for ch in test_text)  # both languages in every part
    assert (tmp_path / "s" / "champion" / "model.safetensors").is_file()


def test_unreadable_file_is_skipped_with_a_warning(tmp_path, corpus, cli):
    data = tmp_path / "d"
    data.mkdir()
    (data / "good.txt").write_text((corpus / "a.txt").read_text(encoding="utf-8")[:20_000], encoding="utf-8")
    (data / "latin1.txt").write_bytes("café crème".encode("latin-1") * 50)
    (data / "binary.txt").write_bytes(b"\x00\x01\x02" * 100)
    (data / "empty.txt").write_text("", encoding="utf-8")
    proc = cli("--mode", "train", "--state", tmp_path / "s", "--data_dir", data, "--epochs", "1",
               "--steps-per-epoch", "2", *TINY_MODEL, "eval_batches=2")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    for name in ("latin1.txt", "binary.txt", "empty.txt"):
        assert "warning: skipped" in proc.stderr and name in proc.stderr, proc.stderr
    split = json.loads((tmp_path / "s" / "data" / "split.json").read_text(encoding="utf-8"))
    assert [Path(s).name for s in split["sources"]] == ["good.txt"]


def test_errors_are_one_line(tmp_path, cli):
    one_line_error(evolve("--mode", "evolve", "--state", tmp_path / "none"), "--mode train")
    for args, fragment in ((("--mode", "demo"), "no trained model"), (("--mode", "stats"), "no evolution statistics"),
                           (("--mode", "evolve", "lr=1"), "--mode train only"),
                           (("--mode", "train", "--epochs", "0"), "--epochs")):
        one_line_error(cli(*args, "--state", tmp_path / "none"), fragment)


@pytest.mark.slow
def test_rejected_cycle_leaves_champion_byte_identical(trained, tmp_path, cli):
    state = copy_state(trained, tmp_path)
    before = folder_bytes(state / "champion")
    mtimes = {p.name: p.stat().st_mtime_ns for p in (state / "champion").iterdir()}
    proc = cli("--mode", "evolve", "--state", state, "--cycles", "1", "--min-improvement", "100", *FAST_EVOLVE)
    assert proc.returncode == 0, proc.stderr
    assert "rejected" in proc.stdout and "champion kept" in proc.stdout
    assert folder_bytes(state / "champion") == before
    assert {p.name: p.stat().st_mtime_ns for p in (state / "champion").iterdir()} == mtimes
    stats = json.loads((state / "evolution_stats.json").read_text(encoding="utf-8"))
    h = stats["history"][0]
    assert h["decision"] == "rejected" and h["champion_loss_after"] == h["champion_loss_before"]
    assert len(h["candidates"]) == 3 and stats["failed_evolutions"] == 1
    assert not (state / "cycle_state.json").exists() and not (state / "cycle").exists()


@pytest.mark.slow
def test_accepted_cycle_lowers_heldout_loss(trained, tmp_path, cli):
    from llm_foundry.evolve.local_train import Runtime
    from llm_foundry.evolve.state import StatePaths
    from llm_foundry.models import load_model_dir

    state = copy_state(trained, tmp_path)
    paths = StatePaths(state)
    rt = Runtime.open(paths, 64, 8, 4, "cpu", "fp32")  # the state's batch size and eval_batches=4
    loss_start = rt.val_loss(load_model_dir(paths.champion).model)
    proc = cli("--mode", "evolve", "--state", state, "--cycles", "2", "--population", "2", "--precision", "fp32",
               *FAST_EVOLVE)
    assert proc.returncode == 0, proc.stderr
    stats = json.loads((state / "evolution_stats.json").read_text(encoding="utf-8"))
    assert stats["successful_evolutions"] >= 1
    for h in stats["history"]:
        assert {"candidates", "decision", "champion_loss_before", "champion_loss_after", "compute"} <= set(h)
        for c in h["candidates"]:
            assert {"lr", "batch_size", "hard_frac", "self_frac"} == set(c["hparams"])
            assert c["early_stopped"] or {"val_loss", "diversity", "repetition", "score"} <= set(c)
        if h["decision"] == "accepted":
            assert h["champion_loss_after"] < h["champion_loss_before"]
            assert h["improvement"] > h["min_improvement"]
    loss_end = rt.val_loss(load_model_dir(paths.champion).model)
    # measured again, independently of the engine: strictly lower, and what the stats say
    assert loss_end < loss_start
    assert loss_end == pytest.approx(stats["champion_val_loss"], abs=1e-4)
    assert stats["total_evolutions"] == stats["successful_evolutions"] + stats["failed_evolutions"] == 2
    # source fields, average over the accepted cycles
    acc = [h["improvement"] for h in stats["history"] if h["decision"] == "accepted"]
    assert stats["average_improvement"] == pytest.approx(sum(acc) / len(acc), abs=1e-5)


@pytest.mark.slow
def test_interrupted_evolution_resumes_in_its_cycle_and_stats_add_up(trained, tmp_path, cli):
    state = copy_state(trained, tmp_path)
    assert cli("--mode", "evolve", "--state", state, "--cycles", "1", *FAST_EVOLVE).returncode == 0
    cmd = [sys.executable, "-m", "llm_foundry", "evolve", "--mode", "evolve", "--state", str(state), "--cycles", "2",
           "--cycle-steps", "60", "--mine-windows", "32", "--hard-keep", "8", "--self-samples", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **ENV})
    cycle_state = state / "cycle_state.json"
    wait_for_json(cycle_state, lambda d: d.get("candidates"), proc, "the first candidate of cycle 2 never finished")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    saved = json.loads(cycle_state.read_text(encoding="utf-8"))
    # normally cycle 2; on a machine so loaded that the signal came late, cycle 3
    assert saved["cycle"] in (2, 3) and saved["target"] == 3 and saved["candidates"]
    stats = json.loads((state / "evolution_stats.json").read_text(encoding="utf-8"))
    assert stats["total_evolutions"] == saved["cycle"] - 1  # the interrupted cycle is not counted
    # Run again: it continues at cycle 2 (keeping the finished candidate) and stops at the old target, 3.
    proc = cli("--mode", "evolve", "--state", state, "--cycles", "5", "--cycle-steps", "60", "--mine-windows", "32",
               "--hard-keep", "8", "--self-samples", "2")
    assert proc.returncode == 0, proc.stderr
    assert f"resuming the interrupted evolution at cycle {saved['cycle']}" in proc.stdout
    stats = json.loads((state / "evolution_stats.json").read_text(encoding="utf-8"))
    assert [h["cycle"] for h in stats["history"]] == [1, 2, 3]
    assert stats["total_evolutions"] == stats["successful_evolutions"] + stats["failed_evolutions"] == 3
    first = saved["candidates"]["0"]
    assert stats["history"][saved["cycle"] - 1]["candidates"][0] == first  # kept, not trained again
    assert not cycle_state.exists()


def wait_for_json(path: Path, ready, proc, failure: str, timeout: float = 300) -> None:
    """Poll the JSON file ``path`` (written atomically by the running ``proc``) until ``ready(data)``."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if ready(json.loads(path.read_text(encoding="utf-8"))):
                return
        except (json.JSONDecodeError, OSError):
            pass  # not written yet
        time.sleep(0.02)
    proc.kill()
    pytest.fail(failure)


@pytest.mark.slow
def test_interrupted_training_continues_at_the_next_epoch(trained, corpus, tmp_path, cli):
    state = copy_state(trained, tmp_path)
    args = ["--mode", "train", "--state", str(state), "--data_dir", str(corpus), "--epochs", "3",
            "--steps-per-epoch", "60", "--log-every", "20"]
    proc = subprocess.Popen([sys.executable, "-m", "llm_foundry", "evolve", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **ENV})
    run_file = state / "train_run.json"
    wait_for_json(run_file, lambda d: d.get("epoch_done") == 1 and not d.get("finished"), proc, "epoch 1 never finished")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err, err
    done = json.loads(run_file.read_text(encoding="utf-8"))["epoch_done"]  # 1, or 2 if the signal came late
    proc = cli(*args)
    assert proc.returncode == 0, proc.stderr
    assert f"resuming training at epoch {done + 1}/3" in proc.stdout
    log = json.loads((state / "training_log.json").read_text(encoding="utf-8"))
    run_id = json.loads(run_file.read_text(encoding="utf-8"))["run_id"]
    assert [e["epoch"] for e in log if e["run_id"] == run_id] == [1, 2, 3]
    assert [e["step"] for e in log if e["run_id"] == run_id] == [60, 120, 180]


@pytest.mark.slow
def test_stats_table_and_plot(trained, tmp_path, cli):
    state = copy_state(trained, tmp_path)
    assert cli("--mode", "evolve", "--state", state, "--cycles", "1", *FAST_EVOLVE).returncode == 0
    # A kill after the cycle was recorded but before its leftovers were removed: the cycle counts once,
    # and the next run starts a new cycle instead of "resuming" the finished one.
    (state / "cycle").mkdir()
    (state / "cycle_state.json").write_text(json.dumps({"cycle": 1, "target": 1, "candidates": {},
                                                        "decision": {"accepted": False, "best": None, "improvement": 0}}))
    proc = cli("--mode", "evolve", "--state", state, "--cycles", "1", *FAST_EVOLVE)
    assert proc.returncode == 0 and "resuming" not in proc.stdout, proc.stderr
    assert not (state / "cycle_state.json").exists() and not (state / "cycle").exists()
    stats = json.loads((state / "evolution_stats.json").read_text(encoding="utf-8"))
    assert [h["cycle"] for h in stats["history"]] == [1, 2]
    assert stats["total_evolutions"] == stats["successful_evolutions"] + stats["failed_evolutions"] == 2
    proc = cli("--mode", "stats", "--state", state, "--plot", tmp_path / "loss.png")
    assert proc.returncode == 0, proc.stderr
    for field in ("total evolutions: 2", "successful evolutions:", "failed evolutions:", "average improvement:"):
        assert field in proc.stdout
    assert "held-out loss" in proc.stdout and "cycle" in proc.stdout
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_demo_and_interactive(trained, cli):
    proc = cli("--mode", "demo", "--state", trained, "--max-tokens", "8")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("prompt:") == 5 and "人工智能" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "llm_foundry", "evolve", "--mode", "interactive", "--state", str(trained),
                           "--max-tokens", "5", "--temperature", "1.2"], input="你好\n\nquit\nnot reached\n",
                          capture_output=True, text=True, timeout=120, env={**os.environ, **ENV})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("你好") and "not reached" not in proc.stdout


def test_model_folder_swap_recovers(tmp_path, trained):
    from llm_foundry.evolve.state import recover_model_dir

    champ = tmp_path / "champion"
    shutil.copytree(trained / "champion", champ)
    before = folder_bytes(champ)
    # killed after the old folder was moved aside, before the new one was complete
    os.replace(champ, tmp_path / ".champion.old")
    (tmp_path / ".champion.new").mkdir()
    (tmp_path / ".champion.new" / "model.safetensors").write_bytes(b"partial")
    recover_model_dir(champ)
    assert folder_bytes(champ) == before
    assert not (tmp_path / ".champion.new").exists() and not (tmp_path / ".champion.old").exists()


def test_self_generated_text_filters():
    from llm_foundry.evolve.mining import SelfGenFilter, distinct_n, repetition

    corpus = "床前明月光，疑是地上霜。举头望明月，低头思故乡。" * 3
    f = SelfGenFilter()
    assert f.check("短", corpus, []) == "too short"
    assert f.check("哈哈哈哈哈哈哈哈哈哈哈哈哈哈哈哈哈哈哈哈哈哈哈哈哈哈哈哈", corpus, []) == "repetitive"
    assert f.check("床前明月光，疑是地上霜。举头望明月，低头思故乡。", corpus, []) == "copied from the corpus"
    novel = "春风吹过小河边，孩子们在草地上放风筝，老人坐在树下喝茶聊天。"
    assert f.check(novel, corpus, []) is None
    assert f.check(novel, corpus, [novel]) == "near-duplicate"
    assert f.check("\ufffd" * 10 + novel, corpus, []) == "broken characters"
    assert repetition("abcabcabcabc") > 0.5 > repetition(novel)
    assert distinct_n(novel) > distinct_n("abababababab")


# ------------------------------------------------------------------ state safety (issue 21)
def test_a_second_process_on_a_state_folder_is_refused_naming_the_holder(trained, corpus, tmp_path, cli):
    state = copy_state(trained, tmp_path)
    champion = folder_bytes(state / "champion")
    # The holder: a real `--mode train` with a long epoch, caught once it prints its epoch header.
    holder = subprocess.Popen([sys.executable, "-m", "llm_foundry", "evolve", "--mode", "train", "--state", str(state),
                               "--data-dir", str(corpus), "--epochs", "1", "--steps-per-epoch", "100000",
                               "--log-every", "1000000"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              text=True, env={**os.environ, **ENV})
    try:
        assert any(line.startswith("Epoch 1/1") for line in holder.stdout), "the holder never started its epoch"
        for mode, extra in (("train", ["--epochs", "1", "--steps-per-epoch", "2"]), ("evolve", FAST_EVOLVE)):
            proc = cli("--mode", mode, "--state", state, *extra)
            one_line_error(proc, f"{state} is in use by another `foundry evolve --mode train`", f"pid {holder.pid}")
        assert folder_bytes(state / "champion") == champion
    finally:
        holder.kill()  # no clean exit: the lock must not outlive its process
        holder.wait()
        holder.stdout.close()
    proc = cli("--mode", "train", "--state", state, "--epochs", "1", "--steps-per-epoch", "2")
    assert proc.returncode == 0, proc.stderr


def test_a_record_appended_after_a_torn_one_is_read_back(tmp_path):
    from llm_foundry.utils.io import append_records, read_log_records

    log = tmp_path / "knowledge" / "self_generated.jsonl"
    assert append_records(log, [{"text": "一"}, {"text": "二"}]) == 0
    with open(log, "ab") as f:  # a kill in the middle of the next append
        f.write('{"text": "三'.encode("utf-8")[:-1])
    assert append_records(log, [{"text": "四"}]) > 0  # the torn record is reported, cut off
    assert [r["text"] for r in read_log_records(log)] == ["一", "二", "四"]
    with open(log, "ab") as f:  # a whole record whose line end was not written is kept
        f.write(b'{"text": "five"}')
    assert append_records(log, [{"text": "六"}]) == 0
    assert [r["text"] for r in read_log_records(log)] == ["一", "二", "四", "five", "六"]
    assert log.read_bytes().endswith(b"\n") and log.read_text(encoding="utf-8").count("\n") == 5


@pytest.mark.parametrize("exchange", [True, False])
def test_every_folder_rename_is_followed_by_an_fsync_of_its_folder(tmp_path, monkeypatch, exchange):
    # Fault observation: record each rename, folder removal and fsync, in order.
    from llm_foundry.utils import io

    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to name an fsynced descriptor")

    events: list[tuple[str, str]] = []
    real_replace, real_fsync, real_rmtree, real_exchange = os.replace, os.fsync, shutil.rmtree, io._exchange

    def replace(src, dst):
        real_replace(src, dst)
        events.append(("rename", str(Path(dst).parent)))

    def swap(a, b):
        ok = exchange and real_exchange(a, b)
        if ok:
            events.append(("rename", str(Path(b).parent)))
        return ok

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(io, "_exchange", swap)
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(shutil, "rmtree", lambda *a, **k: (events.append(("rmtree", "")), real_rmtree(*a, **k)))

    def fill(text):
        return lambda folder: (folder / "f.txt").write_text(text)

    target = tmp_path / "champion"
    io.replace_folder(target, fill("a"))  # a new folder
    io.replace_folder(target, fill("b"))  # a swap
    os.rename(target, tmp_path / ".champion.new")  # a kill between the fallback's two renames
    io.recover_folder(target)
    assert (target / "f.txt").read_text() == "b"
    renames = [i for i, e in enumerate(events) if e[0] == "rename"]
    assert len(renames) >= (5 if exchange else 6)
    for i in renames:
        assert events[i + 1:i + 2] == [("fsync", str(tmp_path.resolve()))], f"rename {i} not followed by a folder fsync: {events}"


def test_train_mode_keeps_a_better_champion(trained, corpus, tmp_path, cli):
    state = copy_state(trained, tmp_path)
    champion = folder_bytes(state / "champion")
    # A learning rate that wrecks the model: its best epoch is worse on the held-out split.
    proc = cli("--mode", "train", "--state", state, "--data-dir", corpus, "--epochs", "1", "--steps-per-epoch", "4",
               "lr=0.5", "warmup_steps=1")
    assert proc.returncode == 0, proc.stderr
    assert "champion kept" in proc.stdout, proc.stdout
    assert folder_bytes(state / "champion") == champion
    run = json.loads((state / "train_run.json").read_text(encoding="utf-8"))
    assert run["finished"] and run["champion"] == "kept"
    proc = cli("--mode", "train", "--state", state, "--data-dir", corpus, "--epochs", "1", "--steps-per-epoch", "4",
               "lr=0.5", "warmup_steps=1", "--quiet")
    assert proc.returncode == 0 and "champion kept" in proc.stdout, proc.stdout + proc.stderr
