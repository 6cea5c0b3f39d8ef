"""The Lab's engine on a tiny module: the learner's artifacts generated from one source, a test run
in the sandbox and its results.json, feedback that teaches, and the authoring check.

Every run here is a real one: pytest in a child process through ``lab.sandbox.run``, on files
written to a temporary folder.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lab_fixtures import ANSWER, make_module
from llm_foundry.lab import sandbox
from llm_foundry.lab.check import check_module, first_argument
from llm_foundry.lab.module import load_module
from llm_foundry.lab import workspace
from llm_foundry.lab.results import PACKAGE_DIR, finish, limits_for, run_tests, sandbox_spec
from llm_foundry.lab.workspace import read_learner_files, restore_stubs, signature, wait_for_change, write_workspace
from llm_foundry.utils.errors import FoundryError

FAST = sandbox.Limits(wall_s=30)


@pytest.fixture()
def module(tmp_path, monkeypatch):
    monkeypatch.setenv("FOUNDRY_LAB_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FOUNDRY_LAB_MODULES", str(tmp_path / "modules"))
    return load_module(make_module(tmp_path / "modules"))


def run(module, code: str, lang: str = "en", limits: sandbox.Limits = FAST) -> dict:
    return run_tests(module, {"arith.py": code}, lang, limits=limits)


# ----------------------------------------------------------------------------- one source, every artifact
def test_stub_reference_and_variants_come_from_the_solution(module):
    stub = module.stub("arith.py")
    assert 'raise NotImplementedError("add")' in stub and 'raise NotImplementedError("neg")' in stub
    assert "BEGIN SOLUTION" not in stub and "return a + b" not in stub
    ref = module.reference("arith.py")
    assert "return a + b" in ref and "SOLUTION" not in ref
    both = module.replace("arith.py", {"add": "return 0", "neg": "pass"})
    assert "    return 0\n" in both and "    pass\n" in both and "return -x" not in both
    assert "return a - b" in module.variant(module.bugs[0]) and "return -x" in module.variant(module.bugs[0])
    with pytest.raises(FoundryError, match="no block 'nope'"):
        module.replace("arith.py", {"nope": "pass"})


def test_a_malformed_module_is_one_line_error(tmp_path):
    folder = tmp_path / "01_bad"
    folder.mkdir()
    (folder / "module.yaml").write_text("number: 1\nslug: bad\n", encoding="utf-8")
    with pytest.raises(FoundryError, match="lacks the field 'title'"):
        load_module(folder)


# ----------------------------------------------------------------------------- a test run and its results
def test_the_reference_passes_and_the_results_follow_the_contract(module):
    r = run(module, module.reference("arith.py"))
    assert r["status"] == "pass", r["message"]
    assert set(r) >= {"version", "module", "status", "message", "duration_s", "sandbox", "tests"}
    assert r["version"] == 1 and r["module"] == 1 and r["message"] == "all 4 tests pass"
    assert set(r["sandbox"]["layers"]) == set(sandbox.LAYERS) and isinstance(r["sandbox"]["degraded"], bool)
    names = {t["name"]: t for t in r["tests"]}
    assert set(names) == {"test_arith.py::test_add", "test_arith.py::test_neg",
                          "test_arith_hidden.py::test_add_negative", "test_arith_hidden.py::test_neg_float"}
    assert not names["test_arith.py::test_add"]["hidden"] and "check_equal" in names["test_arith.py::test_add"]["test_code"]
    # a hidden test is named and judged, its code is not shown
    assert names["test_arith_hidden.py::test_neg_float"]["hidden"]
    assert names["test_arith_hidden.py::test_neg_float"]["test_code"] == ""


def test_the_stub_fails_with_not_written_yet_and_the_line(module):
    r = run(module, module.stub("arith.py"))
    assert r["status"] == "fail"
    add = next(t for t in r["tests"] if t["name"] == "test_arith.py::test_add")
    line = module.stub("arith.py").splitlines().index('    raise NotImplementedError("add")') + 1
    assert add["status"] == "fail" and add["message"] == f"`add` is not written yet (your arith.py, line {line})"
    assert add["error_class"] == "NotImplementedError"


def test_a_wrong_answer_names_call_expected_actual_and_gets_its_bug_feedback(module):
    r = run(module, module.variant(module.bugs[0]))
    assert r["status"] == "fail"
    add = next(t for t in r["tests"] if t["name"] == "test_arith.py::test_add")
    assert add["message"].startswith("add(2, 3) (your arith.py, line 4): expected 5, got -1")
    assert add["message"].endswith("You subtracted instead of adding.") and add["bug"] == "sub"
    assert next(t for t in r["tests"] if t["name"] == "test_arith.py::test_neg")["status"] == "pass"
    zh = run(module, module.variant(module.bugs[0]), lang="zh")
    assert "你做了减法而不是加法。" in zh["message"] and "个失败" in zh["message"]


@pytest.mark.parametrize("code, status, words", [
    ("def add(a, b):\n    return a +\n", "error", ["SyntaxError", "your arith.py, line 2", "return a +"]),
    ("def add(a, b):\n    return a + b\n", "error", ["cannot import name 'neg' from 'arith'", "rename or delete"]),
    ("def add(a, b):\n    return a + None\n\ndef neg(x):\n    return -x\n", "error",
     ["TypeError", "(your arith.py, line 2)"]),
    ("def add(a, b):\n    return add(a, b)\n\ndef neg(x):\n    return -x\n", "error", ["calls itself without end"]),
    ("import os\n\ndef add(a, b):\n    os._exit(3)\n\ndef neg(x):\n    return -x\n", "error",
     ["ended during this test (exit status 3)"]),
    ("import asyncio\n\ndef add(a, b):\n    asyncio.AbstractEventLoop().run_forever()\n\ndef neg(x):\n    return -x\n",
     "error", ["NotImplementedError", "(your arith.py, line 4)"]),
], ids=["syntax", "import", "type", "recursion", "exit", "a-librarys-not-implemented"])
def test_errors_in_the_learners_code_say_what_and_where(module, code, status, words):
    r = run(module, code)
    assert r["status"] == status
    assert all(w in r["message"] for w in words), r["message"]
    assert "/tmp/" not in r["message"]  # the run folder's temporary name is not the learner's business


def test_an_endless_loop_is_stopped_and_said_in_plain_words(module):
    loop = "def add(a, b):\n    while True:\n        pass\n\ndef neg(x):\n    return -x\n"
    r = run(module, loop, limits=sandbox.Limits(wall_s=4))
    assert r["status"] == "error" and r["error_class"] == "timeout"
    stopped = next(t for t in r["tests"] if t["status"] == "error")
    assert stopped["name"] == "test_arith.py::test_add"
    assert "stopped after 4 s, the time limit" in stopped["message"] and "loop" in stopped["message"]
    # the tests that ran before it still count
    assert r["duration_s"] < 30


def test_running_out_of_memory_is_said_in_plain_words(module):
    greedy = "def add(a, b):\n    hoard = bytearray(3 << 30)\n    return a + b\n\ndef neg(x):\n    return -x\n"
    r = run(module, greedy, limits=sandbox.Limits(wall_s=30, memory_bytes=1 << 30))
    assert r["status"] == "error"
    add = next(t for t in r["tests"] if t["name"] == "test_arith.py::test_add")
    assert "ran out of memory" in add["message"] and "(your arith.py, line 2)" in add["message"], add["message"]
    assert next(t for t in r["tests"] if t["name"] == "test_arith.py::test_neg")["status"] == "pass"


def test_output_is_capped_per_test(module):
    chatty = "def add(a, b):\n    print('x' * 100000)\n    return a + b\n\ndef neg(x):\n    return -x\n"
    r = run(module, chatty)
    assert r["status"] == "pass"
    out = next(t for t in r["tests"] if t["name"] == "test_arith.py::test_add")["output"]
    assert len(out) < 2200 and "more characters" in out


def test_a_hidden_test_may_use_a_visible_tests_helpers(tmp_path):
    visible = VISIBLE_WITH_HELPER
    hidden = "from test_arith import expect_add\n\n\ndef test_add_more():\n    expect_add(-7, 2, -5)\n"
    module = load_module(make_module(tmp_path, visible=visible, hidden=hidden))
    r = run(module, ANSWER)
    assert r["status"] == "pass" and len(r["tests"]) == 3, r["message"]


def test_pytest_by_hand_in_the_workspace_imports_the_learners_files(module, tmp_path):
    ws = tmp_path / "ws"
    write_workspace(module, ws)
    (ws / "arith.py").write_text(ANSWER, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(PACKAGE_DIR.parent)}
    # -P: the working directory is not put on sys.path, as when a learner types `pytest`
    done = subprocess.run([sys.executable, "-P", "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=ws, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "2 passed" in done.stdout, done.stdout + done.stderr


def test_a_results_file_turned_into_a_link_is_not_followed(module, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text('{"tests": [], "running": null, "SECRET": "s3cr3t"}', encoding="utf-8")
    attack = (f"import os\n\ndef add(a, b):\n    os.replace('results.json', 'x')\n"
              f"    os.symlink({str(secret)!r}, 'results.json')\n    os._exit(0)\n\ndef neg(x):\n    return -x\n")
    r = run(module, attack)
    assert r["status"] == "error" and "a link" in r["message"] and "s3cr3t" not in str(r)


def test_a_results_file_hard_linked_to_a_secret_is_not_read(module, tmp_path):
    secret = tmp_path / "secret.json"
    secret.write_text('{"tests": [], "running": null, "exit_code": 0, "SECRET": "s3cr3t"}', encoding="utf-8")
    attack = (f"import os\n\ndef add(a, b):\n    os.unlink('results.json')\n"
              f"    os.link({str(secret)!r}, 'results.json')\n    os._exit(0)\n\ndef neg(x):\n    return -x\n")
    r = run(module, attack)
    assert r["status"] == "error" and "s3cr3t" not in str(r)
    # the link was made and the harness refused it; or a sandbox layer (own uid, bubblewrap) kept the
    # secret out of reach, and the learner's code failed to make it
    assert "results.json not a plain file with one name" in r["message"] or any(
        t["error_class"] in ("PermissionError", "FileNotFoundError") for t in r["tests"]), r["message"]


def test_a_sandbox_that_cannot_start_says_it_is_not_the_learners_fault(module):
    outcome = sandbox.SandboxResult("sandbox", None, "", "", 0.1, sandbox.probe())
    outcome.error = "bubblewrap: setting up uid map: Permission denied"  # the field the real sandbox fills
    r = finish(module, outcome, None, "missing", [], FAST, "en")
    assert r["status"] == "error" and r["error_class"] == "sandbox"
    assert "the sandbox could not start them (bubblewrap: setting up uid map" in r["message"]
    assert "not of your code" in r["message"]


def test_stop_first_ends_the_run_at_the_first_failure(module):
    r = run_tests(module, {"arith.py": module.stub("arith.py")}, limits=FAST, stop_first=True)
    assert r["status"] == "fail" and [t["status"] for t in r["tests"]] == ["fail"]


def test_the_run_sees_a_minimal_environment_and_its_own_folder(module, monkeypatch):
    monkeypatch.setenv("FOUNDRY_TEST_SECRET", "hunter2")
    spy = ("import os, sys\n\ndef add(a, b):\n    print(sorted(os.environ), os.getcwd() == sys.path[0])\n"
           "    return a + b\n\ndef neg(x):\n    return -x\n")
    r = run(module, spy)
    out = next(t for t in r["tests"] if t["name"] == "test_arith.py::test_add")["output"]
    assert "FOUNDRY_TEST_SECRET" not in out and "FOUNDRY_LAB_HOME" not in out and out.strip().endswith("True")


def test_the_spec_hides_the_solutions_and_the_progress_and_reads_the_package(module, tmp_path):
    spec = sandbox_spec(tmp_path, module, ["test_arith_hidden.py"], "en")
    assert module.path / "solution" in spec.hidden and tmp_path / "home" in spec.hidden
    assert Path(sys.prefix).resolve() in spec.readonly and PACKAGE_DIR in spec.readonly
    assert spec.argv[:4] == [sys.executable, "-B", "-m", "llm_foundry.lab.runner"] and spec.workspace == tmp_path
    assert spec.env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] == "1" and "FOUNDRY_LAB_HOME" not in spec.env


def test_a_module_may_raise_its_limits_but_only_known_ones(module, tmp_path):
    assert limits_for(module) == sandbox.Limits()
    big = load_module(make_module(tmp_path / "other", limits={"memory_bytes": 3 << 30, "wall_s": 90}))
    assert limits_for(big).memory_bytes == 3 << 30 and limits_for(big).wall_s == 90
    odd = load_module(make_module(tmp_path / "odd", limits={"gpus": 1}))
    with pytest.raises(FoundryError, match="limits may set only"):
        limits_for(odd)


# ----------------------------------------------------------------------------- the workspace
def test_workspace_keeps_the_learners_files_and_reads_no_links(module, tmp_path):
    ws = tmp_path / "ws"
    written, kept = write_workspace(module, ws, "zh")
    assert written == ["arith.py"] and not kept and (ws / "tests" / "test_arith.py").is_file()
    assert not (ws / "tests" / "test_arith_hidden.py").exists()  # hidden tests never reach the workspace
    assert "介绍" in (ws / "INTRO.md").read_text(encoding="utf-8")
    assert (ws / "figures" / "sum.svg").read_text(encoding="utf-8") == "<svg/>"  # INTRO.md's figures/ links work
    (ws / "arith.py").write_text(ANSWER, encoding="utf-8")
    assert write_workspace(module, ws)[1] == ["arith.py"] and (ws / "arith.py").read_text() == ANSWER
    assert read_learner_files(module, ws) == {"arith.py": ANSWER.encode()}
    backup = restore_stubs(module, ws)
    assert (backup / "arith.py").read_text() == ANSWER and "NotImplementedError" in (ws / "arith.py").read_text()
    (ws / "arith.py").unlink()
    os.symlink(tmp_path / "home", ws / "arith.py")
    with pytest.raises(FoundryError, match="not links"):
        read_learner_files(module, ws)
    (ws / "arith.py").unlink()
    with pytest.raises(FoundryError, match="is missing: `foundry lab start 1` writes it again"):
        read_learner_files(module, ws)
    (ws / "arith.py").write_bytes(b"#" * (2 << 20))
    with pytest.raises(FoundryError, match="larger than"):
        read_learner_files(module, ws)


def test_watch_sees_a_save_through_events_and_by_polling_without_them(module, tmp_path, monkeypatch):
    ws = tmp_path / "ws"
    write_workspace(module, ws)
    before = signature(ws, module.files)
    (ws / "arith.py").write_text(ANSWER, encoding="utf-8")  # saved while a run was going on
    wait_for_change(ws, module.files, since=before, poll_s=0.05)  # returns: the save is seen
    # a filesystem that sends no events (a network mount): the polling fallback sees the save
    monkeypatch.setattr(workspace, "_inotify", lambda folders: None)
    before = signature(ws, module.files)
    tmp = ws / "arith.py.swp"
    tmp.write_text(ANSWER + "\n# edited\n", encoding="utf-8")
    os.replace(tmp, ws / "arith.py")  # an editor's atomic save: a new inode
    wait_for_change(ws, module.files, since=before, poll_s=0.05)


# ----------------------------------------------------------------------------- the authoring check
def test_first_argument_finds_the_enclosing_function():
    src = "class A:\n    def f(self, x, y):\n        # here\n        return x\n\ndef g():\n    pass\n\nZ = 1\n"
    assert first_argument(src, 3) == "x" and first_argument(src, 7) == "" and first_argument(src, 9) is None


def test_the_authoring_check_passes_a_sound_module(module):
    findings = check_module(module)
    assert all(f.ok for f in findings), [f for f in findings if not f.ok]
    checks = {f.check for f in findings}
    assert {"source", "reference run 3/3", "stub fails on assertions", "bug sub",
            "`return 0` everywhere passes no test", "`pass` in block neg fails",
            "`return <first argument>` in block add fails"} <= checks


def test_the_authoring_check_catches_weak_tests_and_a_wrong_bug(tmp_path):
    # tests that `return <first argument>` passes (add(2, 0) == 2), a bug whose message is not what it expects,
    # a stub that passes a test, and two hints too few
    weak = ("from arith import add, neg\nfrom llm_foundry.lab.testing import check_equal\n\n\n"
            "def test_add():\n    check_equal('add(2, 0)', add(2, 0), 2, where=add)\n\n\n"
            "def test_neg():\n    check_equal('neg(0)', neg(0), 0, where=neg)\n")
    stubbed = SOLUTION_WITH_STUB
    module = load_module(make_module(tmp_path, visible=weak, hidden="", solution=stubbed,
                                     tasks=[{"id": "add", "title": {"en": "a", "zh": "a"}, "hints": [{"en": "h", "zh": "h"}]}]))
    findings = check_module(module)
    assert [f.check for f in findings if not f.ok][0] == "source"
    assert "task add: 1 hints (at least 3)" in findings[0].detail
    assert any(f.check == "reference run 3/3" for f in findings)  # a text problem does not stop the runs
    broken = load_module(make_module(tmp_path / "broken", bugs=[{"id": "x", "file": "arith.py", "block": "nope",
                                                                "code": "pass", "expect": "x",
                                                                "feedback": {"en": "x", "zh": "x"}}]))
    findings = check_module(broken)
    assert [f.check for f in findings] == ["source"] and "bug x names no block 'nope'" in findings[0].detail
    module = load_module(make_module(tmp_path / "again", visible=weak, hidden="", solution=stubbed))
    bad = {f.check for f in check_module(module) if not f.ok}
    assert {"stub fails on assertions", "bug sub", "`return <first argument>` everywhere passes no test",
            "`return <first argument>` in block add fails", "`return 0` in block neg fails"} <= bad


def test_the_authoring_check_wants_each_bug_to_get_its_own_feedback(tmp_path):
    # `add(2, 3)` is in the message of both wrong answers: the second would be shown the first's feedback
    bugs = [{"id": "sub", "file": "arith.py", "block": "add", "code": "return a - b", "expect": "add(2, 3)",
             "feedback": {"en": "You subtracted.", "zh": "你做了减法。"}},
            {"id": "mul", "file": "arith.py", "block": "add", "code": "return a * b", "expect": "got 6",
             "feedback": {"en": "You multiplied.", "zh": "你做了乘法。"}}]
    module = load_module(make_module(tmp_path, bugs=bugs))
    bad = {f.check: f.detail for f in check_module(module) if not f.ok}
    assert list(bad) == ["bug mul"] and "get the feedback of bug sub" in bad["bug mul"]


VISIBLE_WITH_HELPER = '''from arith import add, neg
from llm_foundry.lab.testing import check_equal


def expect_add(a, b, total):
    check_equal(f"add({a}, {b})", add(a, b), total, where=add)


def test_add():
    expect_add(2, 3, 5)


def test_neg():
    check_equal("neg(4)", neg(4), -4, where=neg)
'''

SOLUTION_WITH_STUB = '''def add(a, b):
    # BEGIN SOLUTION add
    # STUB: return a
    return a + b
    # END SOLUTION


def neg(x):
    # BEGIN SOLUTION neg
    return -x
    # END SOLUTION
'''


def test_a_batch_runs_each_variant_on_its_own_and_stops_only_the_one_that_loops(tmp_path, monkeypatch):
    """The authoring check's batch (one sandbox, a forked child per variant): each variant's result is
    its own; one that loops is stopped at the module's time limit with the plain message, and the
    variant after it runs as if alone. A variant that breaks the interpreter's state breaks only itself."""
    from llm_foundry.lab.results import run_batch

    monkeypatch.setenv("FOUNDRY_LAB_MODULES", str(tmp_path / "modules"))
    module = load_module(make_module(tmp_path / "modules", limits={"wall_s": 4}))
    loop = "def add(a, b):\n    while True:\n        pass\n\ndef neg(x):\n    return -x\n"
    poison = "import builtins\nbuiltins.abs = None\n" + ANSWER  # would break later runs if they shared a process
    sub = ANSWER.replace("a + b", "a - b")
    results = run_batch(module, [({"arith.py": poison}, False), ({"arith.py": loop}, False),
                                 ({"arith.py": sub}, False), ({"arith.py": ANSWER}, True)])
    assert [r["status"] for r in results] == ["pass", "error", "fail", "pass"]
    stopped = next(t for t in results[1]["tests"] if t["status"] == "error")
    assert stopped["name"] == "test_arith.py::test_add" and "stopped after 4 s, the time limit" in stopped["message"]
    assert results[2]["tests"][0]["bug"] == "sub"  # its own failure, with its bug's feedback
    assert all(r["sandbox"]["layers"] for r in results)
