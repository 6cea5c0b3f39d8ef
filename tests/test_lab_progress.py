"""The learner's progress: unlocking, hints, the reference, reflections, reset/skip/revisit, time
spent, and a database that survives kill -9 in the middle of a write."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from llm_foundry.lab import progress as progress_module
from llm_foundry.lab.progress import IDLE_S, Progress, lab_home
from llm_foundry.utils.errors import FoundryError

SRC = Path(__file__).resolve().parents[1] / "src"


def results(status: str) -> dict:
    """A results object as a test run writes it (the parts progress reads)."""
    test = {"name": "t.py::t", "status": status, "message": "", "output": "", "test_code": "", "hidden": False,
            "error_class": None if status == "pass" else "AssertionError"}
    return {"version": 1, "module": 1, "status": status, "message": "", "duration_s": 0.5, "error_class": None,
            "sandbox": {"layers": {}, "degraded": True}, "tests": [test]}


@pytest.fixture()
def progress(tmp_path):
    with Progress.open(tmp_path) as p:
        yield p


def test_home_is_foundry_lab_home(tmp_path, monkeypatch):
    monkeypatch.setenv("FOUNDRY_LAB_HOME", str(tmp_path / "lab"))
    assert lab_home() == tmp_path / "lab"
    with Progress.open() as p:
        assert p.path == tmp_path / "lab" / "progress.db"
    assert sqlite3.connect(tmp_path / "lab" / "progress.db").execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_module_two_unlocks_when_one_passed_and_was_reflected(progress):
    assert progress.state(1).unlocked and not progress.state(2).unlocked
    assert not progress.record_attempt(1, results("fail"))
    assert not progress.submit_reflection(1, ["a", "b", "c"])  # reflected, not passed: still locked
    assert not progress.state(2).unlocked
    assert progress.record_attempt(1, results("pass"))  # this one unlocks
    s = progress.state(1)
    assert s.passed and s.reflected and s.done and s.attempts == 2 and s.last_status == "pass"
    assert progress.state(2).unlocked and [e["after"] for e in progress.events(2, "unlock")] == [1]
    attempts = progress.attempts(1)
    assert [a["status"] for a in attempts] == ["fail", "pass"] and attempts[0]["error_class"] == "AssertionError"
    assert attempts[1]["results"]["tests"][0]["name"] == "t.py::t"
    assert progress.events(1, "reflection")[0]["answers"] == ["a", "b", "c"]


def test_hints_open_level_by_level_and_the_reference_remembers_when(progress):
    assert [progress.open_hint(1, "merge", 3) for _ in range(4)] == [1, 2, 3, None]
    assert progress.open_hint(1, "train", 3) == 1
    assert progress.state(1).hints == {"merge": 3, "train": 1}
    assert progress.view_reference(1) is True  # before passing
    progress.record_attempt(1, results("pass"))
    assert progress.view_reference(1) is False
    s = progress.state(1)
    assert s.reference_viewed and s.reference_before_pass


def test_reset_starts_over_keeps_history_and_leaves_later_modules_unlocked(progress):
    progress.record_attempt(1, results("pass"))
    progress.submit_reflection(1, ["a", "b", "c"])
    progress.open_hint(1, "merge", 3)
    progress.reset(1)
    s = progress.state(1)
    assert not s.passed and not s.reflected and s.hints == {} and s.attempts == 1 and s.last_status is None
    assert progress.state(2).unlocked
    assert [e["kind"] for e in progress.events(1)] == ["reflection", "hint", "reset"]


def test_skip_is_recorded_and_unlocks_the_next(progress):
    assert not progress.state(3).unlocked
    progress.skip(1)
    assert progress.state(1).skipped and progress.state(2).unlocked and not progress.state(3).unlocked
    assert progress.events(1, "skip")


def test_start_remembers_the_workspace_and_a_second_start_is_a_revisit(progress, tmp_path):
    assert progress.workspace(1) is None
    assert progress.start(1, tmp_path / "ws") is False
    assert progress.start(1, tmp_path / "ws2") is True
    assert progress.workspace(1) == tmp_path / "ws2"
    assert [e["kind"] for e in progress.events(1)] == ["start", "revisit"]
    progress.add_note(1, "RoPE rotates pairs")
    assert progress.events(1, "note")[0]["text"] == "RoPE rotates pairs"


def test_time_spent_counts_gaps_between_actions_but_not_breaks(progress, monkeypatch):
    now = [1_000_000.0]
    monkeypatch.setattr(progress_module.time, "time", lambda: now[0])  # a clock we move by hand
    progress.touch(1)
    now[0] += 120
    progress.open_hint(1, "merge", 3)
    now[0] += IDLE_S + 1  # a break: not counted
    progress.record_attempt(1, results("fail"))
    now[0] += 60
    progress.touch(1)
    assert progress.state(1).time_s == pytest.approx(180)


def test_a_damaged_database_is_a_one_line_error(tmp_path):
    (tmp_path / "progress.db").write_bytes(b"this is not a database, it only has the name" * 100)
    with pytest.raises(FoundryError, match="cannot be read"):
        Progress.open(tmp_path)


WRITER = textwrap.dedent("""
    import sys
    from llm_foundry.lab.progress import Progress
    result = {"status": "fail", "duration_s": 0.1, "tests": [{"name": "t", "status": "fail", "error_class": "E"}]}
    with Progress.open(sys.argv[1]) as p:
        i = 0
        while True:
            p.record_attempt(1 + i % 2, result)
            p.open_hint(1 + i % 2, "t%d" % i, 3)
            i += 1
""")


@pytest.mark.parametrize("after", [5, 40, 150])
def test_the_database_survives_kill_9_mid_write(tmp_path, after):
    """A real child writes attempts and hints in a loop; it is killed with SIGKILL once ``after``
    attempts are on disk (so at some random point inside a later write); the database opens,
    passes SQLite's integrity check, and every attempt's counter matches its rows."""
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    child = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], env=env)
    try:
        deadline = time.monotonic() + 120
        count = 0
        while count < after:
            assert child.poll() is None, "the writer died by itself"
            assert time.monotonic() < deadline, "the writer wrote too slowly"
            try:
                conn = sqlite3.connect(f"file:{tmp_path / 'progress.db'}?mode=ro", uri=True, timeout=10)
                count = conn.execute("SELECT count(*) FROM attempts").fetchone()[0]
                conn.close()
            except sqlite3.OperationalError:
                pass  # not created yet
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    with Progress.open(tmp_path) as p:
        conn = p._conn
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        for number, counted in conn.execute("SELECT number, attempts FROM modules"):
            rows = conn.execute("SELECT count(*) FROM attempts WHERE module = ?", (number,)).fetchone()[0]
            assert counted == rows
        assert sum(p.state(n).attempts for n in (1, 2)) >= after
        p.record_attempt(1, results("pass"))  # and it takes writes again
        assert p.state(1).passed
