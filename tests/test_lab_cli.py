"""`foundry lab` as a learner uses it, on two tiny modules: start → test → hint → diff → reflect,
the unlock that follows, the one-line errors, --json, --watch, reset, skip and the authoring check."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab_fixtures import ANSWER, make_module
from llm_foundry.cli.main import main
from llm_foundry.lab.sandbox import probe

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture()
def lab(tmp_path, monkeypatch):
    """Two modules, an empty progress database, the workspace folder to use, and a ``foundry`` to call."""
    for n in (1, 2):
        make_module(tmp_path / "modules", n)
    monkeypatch.setenv("FOUNDRY_LAB_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FOUNDRY_LAB_MODULES", str(tmp_path / "modules"))
    monkeypatch.setenv("LANG", "en_US.UTF-8")
    return tmp_path


def foundry(capsys, *args) -> tuple[int, str, str]:
    code = main(["lab", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def cli(lab: Path, *args, stdin: str = "", timeout: float = 120) -> subprocess.CompletedProcess:
    """``foundry lab ARGS`` in a real child process (stdin not a terminal)."""
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    return subprocess.run([sys.executable, "-m", "llm_foundry", "lab", *map(str, args)], input=stdin, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_a_learners_path_through_a_module_unlocks_the_next(lab, capsys):
    ws = lab / "ws1"
    code, out, _ = foundry(capsys, "list")
    assert code == 0 and "Arithmetic 1" in out and "locked" in out
    code, out, _ = foundry(capsys, "start", 1, "--dir", ws)
    assert code == 0 and "Introduction 1" in out and str(ws / "arith.py") in out and "foundry lab test 1" in out
    code, out, _ = foundry(capsys, "test", 1)  # the remembered workspace
    assert code == 1 and "`add` is not written yet (your arith.py, line" in out and "(hidden)" in out
    if any(v != "on" for v in probe().values()):  # a degraded sandbox is said under every result
        assert "sandbox: degraded (off: " in out
    assert "foundry lab hint 1" in out
    assert out.count("`add` is not written yet") == 2 and "(as above)" in out  # the hidden test's, the same cause
    code, out, _ = foundry(capsys, "hint", 1)
    assert code == 0 and "Hint 1/3" in out and "add hint 1" in out
    (ws / "arith.py").write_text(ANSWER, encoding="utf-8")
    code, out, _ = foundry(capsys, "test", 1)
    assert code == 0 and "4/4 tests pass" in out and "foundry lab reflect 1" in out
    answers = lab / "answers.json"
    answers.write_text(json.dumps(["because", "so", "this"]), encoding="utf-8")
    code, out, _ = foundry(capsys, "reflect", 1, "--answers", answers)
    assert code == 0 and "Model answer 2." in out and "Module 2 is unlocked" in out
    code, out, _ = foundry(capsys, "status")
    assert code == 0 and "done" in out and str(ws) in out
    code, out, _ = foundry(capsys, "start", 2, "--dir", lab / "ws2")
    assert code == 0 and (lab / "ws2" / "arith.py").is_file()


@pytest.mark.parametrize("args, words", [
    (("start", 2), "module 2 is locked: pass module 1 (`foundry lab test 1`) and answer its reflection"),
    (("test", 9), "there is no module 9 (modules: 1, 2)"),
    (("test", 1), "module 1 has no workspace yet: run `foundry lab start 1` first"),
    (("hint", 1, "--task", "nope"), "module 1 has no task 'nope' (tasks: add, neg)"),
    (("check", "--jobs", 0), "--jobs must be at least 1"),
])
def test_mistakes_are_one_line_errors(lab, capsys, args, words):
    code, out, err = foundry(capsys, *args)
    assert code == 1 and err.startswith("error: ") and words in err and err.count("\n") == 1


def test_a_missing_file_says_how_to_get_it_back(lab, capsys):
    foundry(capsys, "start", 1, "--dir", lab / "ws")
    (lab / "ws" / "arith.py").unlink()
    code, _, err = foundry(capsys, "test", 1)
    assert code == 1 and "arith.py is missing: `foundry lab start 1` writes it again" in err


def test_json_prints_the_results_object(lab, capsys):
    foundry(capsys, "start", 1, "--dir", lab / "ws")
    code, out, _ = foundry(capsys, "test", 1, "--json")
    results = json.loads(out)
    assert code == 1 and results["status"] == "fail" and len(results["tests"]) == 4
    assert set(results["tests"][0]) >= {"name", "status", "message", "output", "test_code", "hidden"}


def test_chinese_output(lab, capsys):
    code, out, _ = foundry(capsys, "start", 1, "--dir", lab / "ws", "--lang", "zh")
    assert code == 0 and "介绍 1" in out and "你的工作区" in out
    code, out, _ = foundry(capsys, "test", 1, "--lang", "zh")
    assert "还没有写（你的 arith.py 第" in out
    code, out, _ = foundry(capsys, "hint", 1, "--lang", "zh")
    assert "提示 1/3" in out and "add 提示 1" in out
    code, _, err = foundry(capsys, "test", 9, "--lang", "zh")
    assert code == 1 and err == "error: 没有模块 9（现有模块：1, 2）；`foundry lab list` 列出它们\n"
    code, _, err = foundry(capsys, "start", 2, "--lang", "zh")
    assert code == 1 and "模块 2 尚未解锁" in err


def test_hints_climb_a_task_then_move_to_the_next(lab, capsys):
    outs = [foundry(capsys, "hint", 1)[1] for _ in range(4)]
    assert ["Hint 1/3" in outs[0], "Hint 2/3" in outs[1], "add hint 3" in outs[2], "neg hint 1" in outs[3]] == [True] * 4
    code, out, _ = foundry(capsys, "hint", 1, "--task", "add")
    assert "Every hint of task add is open" in out


def test_diff_asks_before_a_pass_and_is_recorded(lab, capsys):
    foundry(capsys, "start", 1, "--dir", lab / "ws")
    r = cli(lab, "diff", 1)  # stdin is no terminal: it cannot ask, so it refuses
    assert r.returncode == 1 and "add --yes to see the reference anyway" in r.stderr
    code, out, _ = foundry(capsys, "diff", 1, "--yes")
    assert code == 0 and "+    return a + b" in out and "src/llm_foundry/lab/testing.py" in out
    code, out, _ = foundry(capsys, "status")
    assert "before pass" in out


def in_a_terminal(*args, answer: str) -> subprocess.CompletedProcess:
    """``foundry lab ARGS`` whose stdin is a terminal (a pseudo-terminal) where ``answer`` is typed."""
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    main_fd, child_fd = os.openpty()
    try:
        os.write(main_fd, answer.encode())
        return subprocess.run([sys.executable, "-m", "llm_foundry", "lab", *map(str, args)], stdin=child_fd, env=env,
                              capture_output=True, text=True, timeout=120)
    finally:
        os.close(main_fd)
        os.close(child_fd)


def test_diff_before_a_pass_asks_in_a_terminal(lab, capsys):
    foundry(capsys, "start", 1, "--dir", lab / "ws")
    r = in_a_terminal("diff", 1, answer="n\n")
    assert r.returncode == 0 and "has not passed yet" in r.stdout and "reference arith.py" not in r.stdout
    assert "before pass" not in foundry(capsys, "status")[1]  # declined: nothing viewed
    r = in_a_terminal("diff", 1, answer="y\n")
    assert r.returncode == 0 and "+    return a + b" in r.stdout
    assert "before pass" in foundry(capsys, "status")[1]


def test_reflect_reads_answers_typed_in_the_terminal(lab):
    r = cli(lab, "reflect", 1, stdin="one\n\ntwo\nthree\n")  # an empty line is asked again
    assert r.returncode == 0, r.stderr
    assert "an answer, please" in r.stdout and "Model answer 3." in r.stdout
    assert "Pass the tests (`foundry lab test 1`) to unlock module 2" in r.stdout
    r = cli(lab, "reflect", 1, stdin="only one\n")
    assert r.returncode == 1 and r.stderr.strip() == "error: no answer to question 2 (or give --answers FILE.json)"


def test_reset_backs_up_and_skip_unlocks(lab, capsys):
    ws = lab / "ws"
    foundry(capsys, "start", 1, "--dir", ws)
    (ws / "arith.py").write_text(ANSWER, encoding="utf-8")
    assert foundry(capsys, "test", 1)[0] == 0
    code, out, _ = foundry(capsys, "reset", 1)
    assert code == 0 and "starts over" in out
    backups = list((ws / ".lab-backup").iterdir())
    assert len(backups) == 1 and (backups[0] / "arith.py").read_text() == ANSWER
    assert "NotImplementedError" in (ws / "arith.py").read_text()
    code, out, _ = foundry(capsys, "skip", 1)
    assert code == 0 and "Module 2 is unlocked" in out
    assert "skipped" in foundry(capsys, "list")[1]


def test_watch_runs_again_on_save(lab, capsys):
    ws = lab / "ws"
    foundry(capsys, "start", 1, "--dir", ws)
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    child = subprocess.Popen([sys.executable, "-m", "llm_foundry", "lab", "test", "1", "--watch", "--json",
                              "--max-runs", "2"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        db = lab / "home" / "progress.db"
        deadline = time.monotonic() + 120
        while True:  # the first run is on record: the watcher is waiting for a save
            assert child.poll() is None, child.communicate()
            assert time.monotonic() < deadline
            try:
                with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
                    if conn.execute("SELECT count(*) FROM attempts").fetchone()[0] >= 1:
                        break
            except sqlite3.OperationalError:
                pass
        (ws / "arith.py").write_text(ANSWER, encoding="utf-8")
        out, err = child.communicate(timeout=120)
    finally:
        child.kill()
    runs = [json.loads(line) for line in out.splitlines()]
    assert child.returncode == 0, err
    assert [r["status"] for r in runs] == ["fail", "pass"]


def test_check_passes_sound_modules_and_fails_a_broken_one(lab, capsys):
    code, out, _ = foundry(capsys, "check", 1, "--jobs", 2)
    assert code == 0 and "reference run 3/3" in out and "1 modules checked, 0 problems" in out
    (lab / "modules" / "02_arith" / "tests" / "hidden" / "test_arith_hidden.py").unlink()
    (lab / "modules" / "02_arith" / "tests" / "test_arith.py").write_text(
        "from arith import add\n\n\ndef test_nothing():\n    assert True\n", encoding="utf-8")
    code, out, _ = foundry(capsys, "check", 2)
    assert code == 1 and "FAIL stub fails on assertions" in out and "FAIL bug sub" in out
