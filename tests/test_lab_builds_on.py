"""Modules that build on earlier ones (``builds_on``) and modules that need sandbox layers
(``requires_layers``): a run gets the learner's own earlier files, the reference stands in where
they have none, the authoring check uses the references, and a module refuses to run without the
layers it names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from lab_fixtures import make_module
from llm_foundry.cli.main import main
from llm_foundry.lab.check import check_source
from llm_foundry.lab.module import find_module
from llm_foundry.lab.results import run_tests

TWICE = '''"""Twice, with the learner's own add from module 1."""
from arith import add


def twice(x):
    # BEGIN SOLUTION twice
    return add(x, x)
    # END SOLUTION
'''

TEST = '''from twice import twice
from llm_foundry.lab.testing import check_equal


def test_twice():
    check_equal("twice(3)", twice(3), 6, where=twice)
'''


def make_twice(root: Path, **meta) -> None:
    """Module 2 (``02_twice``): builds on module 1's ``arith.py``."""
    path = root / "02_twice"
    make_module(root, 2)  # the texts and hints of a whole module, then made into `twice`
    (root / "02_arith").rename(path)
    data = yaml.safe_load((path / "module.yaml").read_text(encoding="utf-8"))
    data.update({"slug": "twice", "files": ["twice.py"], "builds_on": [{"module": 1, "file": "arith.py"}],
                 "bugs": [], "tasks": [{**data["tasks"][0], "id": "twice"}], **meta})
    (path / "module.yaml").write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    (path / "solution" / "arith.py").unlink()
    (path / "solution" / "twice.py").write_text(TWICE, encoding="utf-8")
    for old in path.glob("tests/**/test_*.py"):
        old.unlink()
    (path / "tests" / "test_twice.py").write_text(TEST, encoding="utf-8")


@pytest.fixture()
def lab(tmp_path, monkeypatch):
    make_module(tmp_path / "modules", 1)
    make_twice(tmp_path / "modules")
    monkeypatch.setenv("FOUNDRY_LAB_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FOUNDRY_LAB_MODULES", str(tmp_path / "modules"))
    return tmp_path


def foundry(capsys, *args) -> tuple[int, str]:
    code = main(["lab", *map(str, args)])
    return code, capsys.readouterr().out


def test_a_run_uses_the_learners_own_earlier_file_and_the_reference_where_there_is_none(lab, capsys):
    assert foundry(capsys, "skip", 1)[0] == 0  # module 1 skipped: no workspace of it
    ws = lab / "ws2"
    assert foundry(capsys, "start", 2, "--dir", ws)[0] == 0
    assert (ws / ".lab-built-on" / "arith.py").is_file()  # `pytest` by hand finds it too
    assert ".lab-built-on" in (ws / "pytest.ini").read_text(encoding="utf-8")
    (ws / "twice.py").write_text("from arith import add\n\n\ndef twice(x):\n    return add(x, x)\n", encoding="utf-8")
    code, out = foundry(capsys, "test", 2, "--json")
    result = json.loads(out)
    assert code == 0 and result["status"] == "pass"
    assert "reference of module 1" in result["built_on"]["arith.py"]

    # the learner's own module 1, wrong: module 2's run uses it and fails (it is their library)
    ws1 = lab / "ws1"
    assert foundry(capsys, "start", 1, "--dir", ws1)[0] == 0
    (ws1 / "arith.py").write_text("def add(a, b):\n    return a * b\n\n\ndef neg(x):\n    return -x\n", encoding="utf-8")
    code, out = foundry(capsys, "test", 2, "--json")
    result = json.loads(out)
    assert code == 1 and result["status"] == "fail"
    assert "twice(3)" in result["tests"][0]["message"] and "9" in result["tests"][0]["message"]
    assert str(ws1 / "arith.py") in result["built_on"]["arith.py"]
    assert "a * b" in (ws / ".lab-built-on" / "arith.py").read_text(encoding="utf-8")


def test_the_authoring_check_runs_on_the_earlier_references(lab):
    module = find_module(2)
    assert check_source(module) == []
    from llm_foundry.lab.module import earlier_references

    files = {**earlier_references(module), "twice.py": module.reference("twice.py")}
    assert run_tests(module, files)["status"] == "pass"


def test_builds_on_must_name_an_earlier_learner_file(lab):
    make_twice(lab / "bad", builds_on=[{"module": 1, "file": "nothere.py"}])
    make_module(lab / "bad", 1)
    from llm_foundry.lab.module import load_module

    problems = check_source(load_module(lab / "bad" / "02_twice"))
    assert any("nothere.py" in p for p in problems), problems


def test_a_module_that_needs_layers_refuses_to_run_without_them(lab, monkeypatch, capsys):
    path = lab / "modules" / "02_twice" / "module.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data["requires_layers"] = ["seccomp"]
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    module = find_module(2)
    files = {"arith.py": "def add(a, b):\n    return a + b\n", "twice.py": module.reference("twice.py")}
    result = run_tests(module, files, layers={"session", "rlimits"})
    assert result["status"] == "error" and result["error_class"] == "sandbox-refused"
    assert "seccomp" in result["message"] and "runs code a model wrote" in result["message"]
    assert result["tests"] == []
    monkeypatch.setenv("FOUNDRY_LAB_SANDBOX_OFF", "seccomp")  # the way a learner turns a layer off
    assert run_tests(module, files)["error_class"] == "sandbox-refused"
    message = run_tests(module, files, lang="zh")["message"]  # says it is the setup, and how to turn the layer on
    assert "FOUNDRY_LAB_SANDBOX_OFF" in message and "不是你的代码" in message
