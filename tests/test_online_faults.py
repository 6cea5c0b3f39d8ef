"""Faults and hostile input for `foundry online` (issue 21): the replay store, the REPL, the vocabulary.

Each test pins one finding of the review: a short write (full disk), a flipped bit, a
failing open, errors inside REPL commands, a snapshot beside unrelated folders, the
vocabulary cap and its geometric growth, and a text file that is checked whole before
any line is stored. The acceptance test kills the real CLI with SIGKILL at random
instants and checks that every line it acknowledged is still stored.
"""

from __future__ import annotations

import errno
import io
import os
import random
import select
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest

from helpers import ROOT, run_cli
from llm_foundry.online import OnlineLearner, ReplayStore
from llm_foundry.online import replay
from llm_foundry.online.learner import VOCAB_CHUNK
from llm_foundry.online.replay import HEADER, LOG_FILE, MAGIC
from llm_foundry.online.repl import Repl
from llm_foundry.online.textfiles import check_text_file
from llm_foundry.utils.errors import FoundryError

SMALL = ["model.dim=32", "model.n_layers=1", "model.n_heads=2", "model.max_seq_len=64"]


def small_learner(state: Path, **settings) -> OnlineLearner:
    return OnlineLearner.open(state, preset="tiny", overrides=SMALL, settings={"steps": 1, **settings}, device="cpu")


def run_repl(learner: OnlineLearner, *lines: str) -> str:
    out = io.StringIO()
    Repl(learner, stdin=io.StringIO("".join(line + "\n" for line in lines)), stdout=out, interactive=False).run()
    return out.getvalue()


def stored(path: Path) -> list[str]:
    with ReplayStore(path) as store:
        return list(store.iter_records())


def flip_bit(store_dir: Path, record: int, record_len: int) -> None:
    """Flip one bit in the payload of ``record`` of a store whose payloads are all ``record_len`` bytes."""
    log = store_dir / LOG_FILE
    data = bytearray(log.read_bytes())
    data[len(MAGIC) + record * (HEADER.size + record_len) + HEADER.size + 2] ^= 0x10
    log.write_bytes(bytes(data))


# ------------------------------------------------------------------ replay store: writes
def test_short_writes_are_completed_and_every_acknowledged_record_survives(tmp_path, monkeypatch):
    """os.write may write less than asked: each record must still be stored whole."""
    store = ReplayStore(tmp_path / "s")
    real_write = os.write
    ours = {store._log, store._idx, store._typ}

    def short_write(fd, data):  # fault injection: the kernel takes at most 5 bytes at a time
        return real_write(fd, bytes(data[:5]) if fd in ours else data)

    monkeypatch.setattr(os, "write", short_write)
    texts = [f"record number {i} · 第{i}行" for i in range(4)]
    for i, text in enumerate(texts):
        store.append(text, durable=True, typed=i % 2 == 0)  # acknowledged as fsynced
    monkeypatch.undo()
    store.close()
    with ReplayStore(tmp_path / "s") as again:
        assert list(again.iter_records()) == texts and again.typed_count == 2 and again.damaged == 0


def test_a_full_disk_rolls_the_record_back_with_a_clear_error(tmp_path, monkeypatch):
    store = ReplayStore(tmp_path / "s")
    store.append("before the disk filled", durable=True, typed=True)
    real_write = os.write
    calls = {"n": 0}

    def disk_fills(fd, data):  # half of the record fits, then the disk is full
        if fd != store._log:
            return real_write(fd, data)
        calls["n"] += 1
        if calls["n"] == 1:
            return real_write(fd, bytes(data[:len(data) // 2]))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", disk_fills)
    with pytest.raises(FoundryError, match="No space left on device.*nothing of it was kept"):
        store.append("this one does not fit", durable=True, typed=True)
    monkeypatch.undo()  # space freed: the store goes on where it was
    assert len(store) == 1
    store.append("after space was freed", durable=True, typed=True)
    store.close()
    with ReplayStore(tmp_path / "s") as again:
        assert list(again.iter_records()) == ["before the disk filled", "after space was freed"]
        assert again.typed_count == 2 and again.damaged == 0 and not any(again.recovered.values())


# ------------------------------------------------------------------ replay store: damage
def test_a_flipped_bit_in_a_middle_record_is_skipped_and_counted(tmp_path):
    texts = [f"line {i:03d}" for i in range(10)]  # 8 bytes each
    with ReplayStore(tmp_path / "s") as store:
        for t in texts:
            store.append(t, durable=True)
    flip_bit(tmp_path / "s", 4, 8)
    with ReplayStore(tmp_path / "s") as store:  # opens: the damage costs one record, not the store
        assert store.damaged == 1 and len(store) == 10
        assert [store[i] for i in range(10)] == [*texts[:4], "", *texts[5:]]
        assert list(store.iter_records()) == [*texts[:4], "", *texts[5:]]
        store.append("and it takes more", durable=True)


def test_the_learner_opens_a_damaged_store_and_says_so(tmp_path):
    learner = small_learner(tmp_path / "st")
    for i in range(6):
        learner.add(f"text {i:03d}")  # 8 bytes each
    learner.close()
    flip_bit(tmp_path / "st" / "replay", 2, 8)
    learner = small_learner(tmp_path / "st")
    out = run_repl(learner, "/stats")
    assert "1 damaged records skipped" in out and "--repair" in out, out
    assert "saved" in out


def test_foundry_online_repair_rewrites_the_store_without_damaged_records(tmp_path):
    state = tmp_path / "st"
    texts = [f"line {i:03d}" for i in range(12)]
    with ReplayStore(state / "replay") as store:
        for i, t in enumerate(texts):
            store.append(t, durable=True, typed=i % 3 == 0)
    flip_bit(state / "replay", 3, 8)  # a typed record
    flip_bit(state / "replay", 7, 8)
    proc = run_cli("online", "--state", state, "--repair", timeout=120)
    assert proc.returncode == 0 and "kept 10 records" in proc.stdout and "dropped 2 damaged" in proc.stdout, \
        proc.stdout + proc.stderr
    with ReplayStore(state / "replay") as store:
        assert store.damaged == 0 and list(store.iter_records()) == [t for i, t in enumerate(texts) if i not in (3, 7)]
        assert [store.typed_record(j) for j in range(store.typed_count)] == [0, 5, 7]  # lines 0, 6, 9
    assert sorted(p.name for p in state.iterdir()) == ["lock", "replay"]  # no swap leftovers
    proc = run_cli("online", "--state", state, "--repair", timeout=120)  # idempotent
    assert proc.returncode == 0 and "nothing to repair" in proc.stdout, proc.stdout + proc.stderr


def test_a_store_that_fails_to_open_leaks_no_descriptor(tmp_path):
    with ReplayStore(tmp_path / "s") as store:
        store.append("x")
    (tmp_path / "s" / LOG_FILE).write_bytes(b"NOTALOG!" + b"\0" * 40)
    fds = Path("/proc/self/fd")
    if not fds.is_dir():
        pytest.skip("no /proc/self/fd here")
    before = len(os.listdir(fds))
    for _ in range(20):
        with pytest.raises(FoundryError, match="is not a replay log"):
            ReplayStore(tmp_path / "s")
    assert len(os.listdir(fds)) == before


# ------------------------------------------------------------------ the REPL
def test_a_non_utf8_byte_on_stdin_is_reported_and_the_session_goes_on_and_saves(tmp_path):
    state = tmp_path / "st"
    proc = subprocess.run([sys.executable, "-m", "llm_foundry", "online", "--state", str(state), "--steps", "1",
                           "--preset", "tiny", *SMALL], input=b"hello\n\xff\xfe broken\nworld\n",
                          capture_output=True, timeout=180, cwd=ROOT)
    out, err = proc.stdout.decode(), proc.stderr.decode()
    assert proc.returncode == 0 and "Traceback" not in err, out + err
    assert "error: a line of input is not UTF-8 text; skipped" in out and "saved" in out, out
    assert stored(state / "replay") == ["hello", "world"]


def test_an_oserror_in_save_or_load_txt_is_one_line_and_the_session_saves(tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    learner = small_learner(tmp_path / "st")
    # The snapshot's parent is a file; a name too long for the system (OSError from os.stat).
    out = run_repl(learner, "first", f"/save {tmp_path / 'a-file' / 'snap'}", "/load_txt " + "x" * 300, "second")
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 2, out
    assert errors[0].startswith("error: /save: File exists") and "File name too long" in errors[1], out
    assert out.count("learned ·") == 2 and out.rstrip().splitlines()[-1].startswith("saved"), out
    learner = small_learner(tmp_path / "st")
    try:
        assert list(learner.store.iter_records()) == ["first", "second"] and learner.step == 2
    finally:
        learner.close()


def test_a_snapshot_leaves_unrelated_folders_beside_it_alone(tmp_path):
    names = ["snap.new", "snap.old", ".snap.new", ".snap.old", ".snap.tmp"]
    for name in names:
        (tmp_path / name).mkdir()
        (tmp_path / name / "mine.txt").write_text(name)
    learner = small_learner(tmp_path / "st")
    try:
        learner.learn("a line")
        out = run_repl(learner, f"/save {tmp_path / 'snap'}", "again", f"/save {tmp_path / 'snap'}",
                       f"/load {tmp_path / 'snap'}")
    finally:
        learner.close()
    assert out.count("and a snapshot to") == 2 and "loaded" in out and "error" not in out, out
    for name in names:
        assert (tmp_path / name / "mine.txt").read_text() == name
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*names, "snap", "st"])  # no swap leftovers
    assert not (tmp_path / "snap" / ".foundry-swap").exists()


def _swap_killed_at(target: Path, call: int, exchange: bool) -> bool:
    """Run a snapshot's folder swap in a forked child killed (SIGKILL) at its ``call``-th file-system
    call; True if the swap finished first."""
    from llm_foundry.utils import io as fio

    pid = os.fork()
    if pid == 0:  # the child: count the calls that change the folder tree, die at the chosen one
        count = [0]

        def counted(fn):
            def wrapper(*args, **kwargs):
                count[0] += 1
                if count[0] == call:
                    os.kill(os.getpid(), signal.SIGKILL)
                return fn(*args, **kwargs)
            return wrapper

        for name in ("mkdir", "replace", "rename", "unlink", "rmdir", "fsync"):
            setattr(os, name, counted(getattr(os, name)))
        fio._renameat2 = counted(fio._renameat2) if fio._renameat2 and exchange else False  # else two renames
        fio.replace_folder(target, lambda folder: (folder / "f.txt").write_text("new"), legacy=False)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    return os.WIFEXITED(status)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_a_snapshot_swap_killed_at_any_call_leaves_one_whole_folder_and_nothing_else(tmp_path, exchange):
    from llm_foundry.utils.io import recover_folder, replace_folder

    mine = ["snap.new", ".snap.new", ".snap.old", ".snap.tmp"]
    for call in range(1, 200):
        root = tmp_path / str(call)
        for name in mine:
            (root / name).mkdir(parents=True)
            (root / name / "mine.txt").write_text(name)
        target = root / "snap"
        replace_folder(target, lambda folder: (folder / "f.txt").write_text("old"), legacy=False)
        finished = _swap_killed_at(target, call, exchange)
        assert recover_folder(target, legacy=False) == target
        assert (target / "f.txt").read_text() in ("old", "new")  # one whole save, old or new
        assert sorted(p.name for p in root.iterdir()) == sorted([*mine, "snap"]), f"kill at call {call}"
        assert sorted(p.name for p in target.iterdir()) == ["f.txt"]
        for name in mine:
            assert (root / name / "mine.txt").read_text() == name
        if finished:  # every call of a whole swap has had its kill
            assert (target / "f.txt").read_text() == "new"
            break
    else:
        raise AssertionError("the swap never finished")


# ------------------------------------------------------------------ vocabulary
def test_vocabulary_stops_at_the_cap_and_later_characters_are_unk(tmp_path):
    learner = small_learner(tmp_path / "st", max_vocab=20)
    try:
        learner.add("abcdefghijklmnopqrstuvwxyz")
        assert learner.tokenizer.vocab_size == 20  # 3 specials (PAD, UNK, line end) + 17 letters
        assert "q" in learner.tokenizer.stoi and "r" not in learner.tokenizer.stoi
        assert learner.model.cfg.vocab_size == 20  # rows never beyond the cap
        learner.add("zzz")
        window = learner._window(len(learner.store) - 1)
        assert window[1:4] == [learner.unk_id] * 3  # stored, trained on as UNK (never a target)
        assert learner.pulse(2).steps == 2
        learner.save()
    finally:
        learner.close()
    reopened = small_learner(tmp_path / "st")  # the cap is a saved setting
    try:
        assert reopened.settings.max_vocab == 20 and reopened.tokenizer.vocab_size == 20
    finally:
        reopened.close()


def test_foundry_online_takes_max_vocab_and_refuses_a_bad_one(tmp_path):
    cmd = [sys.executable, "-m", "llm_foundry", "online", "--state", str(tmp_path / "st"), "--preset", "tiny", *SMALL]
    proc = subprocess.run([*cmd, "max_vocab=16", "--steps", "1"], input="abcdefghijklmnopqrstu\n/quit\n",
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0 and "vocabulary 16" in proc.stdout, proc.stdout + proc.stderr
    bad = subprocess.run([*cmd, "max_vocab=3"], input="", capture_output=True, text=True, timeout=120, cwd=ROOT)
    err = bad.stderr.strip()
    assert bad.returncode != 0 and err.startswith("error:") and "\n" not in err, err
    assert "max_vocab must be an integer from 16" in err, err


def test_vocabulary_rows_double_as_the_vocabulary_grows(tmp_path):
    learner = small_learner(tmp_path / "st")
    rows = [learner.model.cfg.vocab_size]
    try:
        for i in range(1500):
            learner.observe(chr(0x4E00 + i))  # one new character at a time: the worst case
            if learner.model.cfg.vocab_size != rows[-1]:
                rows.append(learner.model.cfg.vocab_size)
        assert learner.tokenizer.vocab_size == 1503
        # A growth copies every vocabulary tensor: it must happen log2(N) times, not N / 64.
        assert rows == [VOCAB_CHUNK * 2 ** k for k in range(6)], rows
        learner.add("".join(chr(0x4E00 + i) for i in range(0, 1500, 7)))
        assert learner.pulse(1).steps == 1  # optimizer and EMA follow the grown rows
        assert set(learner.generate("", temperature=1.0, seed=0)) <= set(learner.tokenizer.stoi)
    finally:
        learner.close()


# ------------------------------------------------------------------ /load_txt
def test_a_file_is_checked_in_memory_linear_in_the_chunk_not_the_line(tmp_path):
    path = tmp_path / "one-long-line.txt"
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(24):
            f.write("x" * (1 << 20))  # a 24 MB line, no newline
    tracemalloc.start()
    try:
        assert check_text_file(path) == 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 12 * (1 << 20), f"peak {peak / (1 << 20):.1f} MB"


def test_load_txt_stores_nothing_of_a_file_it_rejects(tmp_path, monkeypatch):
    monkeypatch.setattr(replay, "MAX_RECORD", 100)  # a small record limit, to keep the file small
    path = tmp_path / "book.txt"
    path.write_text("".join(f"short line {i}\n" for i in range(5)) + "y" * 200 + "\nlast line\n", encoding="utf-8")
    learner = small_learner(tmp_path / "st")
    try:
        with pytest.raises(FoundryError, match="line 6 is longer than 100 bytes"):
            learner.learn_file(path)
        assert len(learner.store) == 0 and learner.step == 0
    finally:
        learner.close()


# ------------------------------------------------------------------ acceptance: kill -9
class Learner:
    """`foundry online` in a subprocess: lines in through stdin, acks read from stdout."""

    def __init__(self, state: Path, log: Path):
        self.err = open(log, "ab")
        self.buf = b""
        self.p = subprocess.Popen([sys.executable, "-m", "llm_foundry", "online", "--state", str(state), "--steps", "2",
                                   "--preset", "tiny", *SMALL], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=self.err, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.wait_for("/help for commands")

    def send(self, line: str) -> None:
        self.p.stdin.write((line + "\n").encode())
        self.p.stdin.flush()

    def wait_for(self, fragment: str, timeout: float = 180) -> str:
        """Read output lines until one holds ``fragment`` (polled, with a generous deadline)."""
        fd, deadline = self.p.stdout.fileno(), time.monotonic() + timeout
        while True:
            while b"\n" in self.buf:
                raw, self.buf = self.buf.split(b"\n", 1)
                line = raw.decode("utf-8", "replace")
                if fragment in line:
                    return line
            left = deadline - time.monotonic()
            assert left > 0, f"no {fragment!r} within {timeout}s"
            if select.select([fd], [], [], left)[0]:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    raise AssertionError(f"the learner ended before {fragment!r} (rc {self.p.wait()})")
                self.buf += chunk

    def kill(self) -> None:
        self.p.kill()  # SIGKILL
        self.p.wait()
        for f in (self.p.stdin, self.p.stdout, self.err):
            try:
                f.close()
            except OSError:
                pass


def kill_trials(tmp_path: Path, trials: int, seed: int) -> None:
    """Type lines and load files, SIGKILL at a random instant (after a random number of acks, a
    random delay into the next input's storing or training), restart; every acknowledged line
    -- typed, or of a file whose load was acknowledged -- must be stored."""
    rng = random.Random(seed)
    state, log = tmp_path / "st", tmp_path / "stderr.log"
    acked: list[str] = []
    sent: set[str] = set()

    def one_input(learner: Learner, trial: int, k: int) -> tuple[list[str], str]:
        """Send a typed line or a /load_txt; returns its lines and the fragment of its ack."""
        if rng.random() < 0.3:
            lines = [f"t{trial} file {k} line {j} {chr(0x4E00 + rng.randrange(2000))}" for j in range(20)]
            path = tmp_path / f"t{trial}-{k}.txt"
            path.write_text("\n".join(lines) + "\n", encoding="utf-8")
            learner.send(f"/load_txt {path}")
            ack = f"learned 20 lines of {path.name}"
        else:
            lines = [f"t{trial} line {k} · 第{trial}次 {chr(0x4E00 + rng.randrange(2000))}"]
            learner.send(lines[0])
            ack = "learned ·"
        sent.update(lines)
        return lines, ack

    for trial in range(trials):
        learner = Learner(state, log)
        for k in range(rng.randint(0, 3)):
            lines, ack = one_input(learner, trial, k)
            learner.wait_for(ack)
            acked.extend(lines)
        one_input(learner, trial, 99)  # in flight when the kill comes
        # The random instant: a drawn delay after the last ack, not a synchronisation.
        time.sleep(rng.choice([0.0, rng.uniform(0.0, 0.4)]))
        learner.kill()
        records = stored(state / "replay")
        assert set(records) <= sent, f"trial {trial}: a record nobody sent"
        it = iter(records)
        assert all(a in it for a in acked), f"trial {trial}: an acknowledged line is missing"
    final = Learner(state, log)  # and the learner still starts and learns
    final.send("after the storm")
    final.wait_for("learned ·")
    final.send("/quit")
    final.wait_for("saved")
    assert final.p.wait(timeout=60) == 0
    assert stored(state / "replay")[-1] == "after the storm"


def test_kill_9_at_random_instants_loses_no_acknowledged_line_short(tmp_path):
    kill_trials(tmp_path, trials=5, seed=1)


@pytest.mark.trials
def test_acceptance_kill_9_at_random_instants_loses_no_acknowledged_line(tmp_path):
    kill_trials(tmp_path, trials=50, seed=21)
