"""The authoring check of Lab modules 1-3, run directly (without the Lab's engine).

For each module: the reference passes; the generated stub fails on assertions (NotImplementedError
counts as a failure, anything else as an error) and passes no test; every bug variant fails with
its ``expect`` in a message; trivially wrong answers (each block's body ``return 0``, ``pass``,
``return <first argument>``) pass no test all at once, and fail the run one block at a time.

Each run is what a Lab test run does: the learner's files and the visible and hidden tests
(flat in ``tests/``) in a fresh folder, pytest in a subprocess with that folder as working
directory and first on ``sys.path``. A small pytest plugin written into the folder records each
test's outcome and exception type.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from llm_foundry.lab.module import Module, blocks, load_module

SRC = Path(__file__).resolve().parents[1] / "src"
MODULES = SRC / "llm_foundry" / "lab" / "modules"
NAMES = ["01_welcome", "02_tokenizer", "03_dataset"]
TRIVIAL = ("return 0", "pass", "return {arg}")

PLUGIN = '''
import json, pytest
_OUT = []

def _kind(exc):
    if exc is None:
        return "pass"
    return "fail" if issubclass(exc, (AssertionError, NotImplementedError)) else "error"

@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    rep = (yield).get_result()
    if rep.when == "call" or rep.failed:
        exc = call.excinfo
        _OUT.append({"name": item.nodeid, "status": "pass" if rep.passed else _kind(exc.type if exc else Exception),
                     "message": str(exc.value) if exc else ""})

def pytest_collectreport(report):
    if report.failed:
        _OUT.append({"name": report.nodeid, "status": "error", "message": str(report.longrepr)[-2000:]})

def pytest_sessionfinish(session):
    with open("_results.json", "w") as f:
        json.dump(_OUT, f)
'''


def run_tests(module: Module, files: dict[str, str], folder: Path, stop_first: bool = False) -> dict:
    """Run the module's visible and hidden tests on ``files`` (learner file name -> text)."""
    (folder / "tests").mkdir(parents=True)
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    for test in module.tests() + module.tests(hidden=True):
        (folder / "tests" / test.name).write_text(test.read_text(encoding="utf-8"), encoding="utf-8")
    (folder / "_lab_plugin.py").write_text(PLUGIN, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": f"{folder}{os.pathsep}{SRC}", "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "_lab_plugin", "tests"]
    start = time.monotonic()
    proc = subprocess.run(argv + (["-x"] if stop_first else []), cwd=folder, env=env, capture_output=True,
                          text=True, timeout=300)
    took = time.monotonic() - start
    out = folder / "_results.json"
    tests = json.loads(out.read_text()) if out.is_file() else []
    statuses = {t["status"] for t in tests}
    status = "error" if "error" in statuses or not tests else "fail" if "fail" in statuses else "pass"
    return {"status": status, "tests": tests, "seconds": took, "log": proc.stdout[-4000:] + proc.stderr[-2000:]}


def first_arg(source: str, line: int) -> str:
    """The first parameter (``self`` aside) of the function around 1-based ``line``; ``None`` if it has none."""
    best = None
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.lineno <= line <= node.end_lineno:
            if best is None or node.lineno > best.lineno:
                best = node
    args = [a.arg for a in best.args.args if a.arg not in ("self", "cls")] if best else []
    return args[0] if args else "None"


def trivial(module: Module, file: str, code: str, only: str | None = None) -> str:
    """The reference of ``file`` with every block's body (or only block ``only``'s) replaced by ``code``."""
    solution = module.solution(file)  # (its markers are comments: it parses as Python)
    lines = solution.splitlines(keepends=True)
    for b in reversed(blocks(lines)):
        if only is not None and b.id != only:
            continue
        body = code.format(arg=first_arg(solution, b.start))
        lines[b.start - 1:b.end + 1] = [f"{b.indent}{body}\n"]
    return "".join(lines)


def reference_files(module: Module) -> dict[str, str]:
    return {f: module.reference(f) for f in module.files}


def describe(result: dict) -> str:
    rows = [f"{t['status']:5} {t['name']}: {t['message'][:300]}" for t in result["tests"]]
    return "\n".join(rows) + "\n" + result["log"][-3000:]


@pytest.fixture(scope="module", params=NAMES)
def module(request) -> Module:
    return load_module(MODULES / request.param)


def test_module_source_is_complete(module):
    meta = module.meta
    for key in ("number", "slug", "title", "minutes", "files", "library", "goals", "tasks", "reflection", "bugs"):
        assert key in meta, f"{module.name}: module.yaml lacks {key}"
    assert module.name == f"{module.number:02d}_{module.slug}"
    assert not (module.path / "__init__.py").exists()
    for lang in ("en", "zh"):
        assert set(module.title) == {"en", "zh"}
        for kind in ("intro", "task"):
            text = module.text(kind, lang)
            assert len(text) > 500, f"{module.name}: {kind}.{lang}.md is too short"
            for fig in re.findall(r"\]\((figures/[^)]+)\)", text):
                assert (module.path / fig).is_file(), f"{module.name}: {kind}.{lang}.md links a missing {fig}"
    for path in meta["library"]:
        assert (SRC / "llm_foundry" / path).exists(), f"{module.name}: library path {path} does not exist"
    for goal in meta["goals"]:
        assert goal["en"] and goal["zh"]
    ids = {b.id for f in module.files for b in blocks(module.solution(f).splitlines(keepends=True))}
    assert ids, f"{module.name}: no solution blocks"
    for task in module.tasks:
        assert task["title"]["en"] and task["title"]["zh"]
        assert len(task["hints"]) >= 3, f"{module.name}: task {task['id']} has fewer than 3 hints"
        assert all(h["en"] and h["zh"] for h in task["hints"])
    assert len(module.reflection) >= 3
    assert all(r["question"]["en"] and r["question"]["zh"] and r["answer"]["en"] and r["answer"]["zh"]
               for r in module.reflection)
    assert len(module.bugs) >= 3
    for bug in module.bugs:
        assert bug.block in ids and bug.file in module.files and bug.expect
        assert bug.feedback["en"] and bug.feedback["zh"]
    assert module.tests() and module.tests(hidden=True)
    names = [t.name for t in module.tests() + module.tests(hidden=True)]
    assert len(names) == len(set(names)), f"{module.name}: visible and hidden test files share a name"


def test_reference_passes_and_stub_fails(module, tmp_path):
    ref = run_tests(module, reference_files(module), tmp_path / "reference")
    assert ref["status"] == "pass", describe(ref)
    assert ref["seconds"] < 60, f"{module.name}: one run took {ref['seconds']:.1f} s"
    stub = run_tests(module, {f: module.stub(f) for f in module.files}, tmp_path / "stub")
    assert stub["status"] == "fail", describe(stub)
    assert not [t for t in stub["tests"] if t["status"] == "pass"], describe(stub)


def run_many(module: Module, jobs: dict[str, dict[str, str]], folder: Path, stop_first: bool = False) -> dict:
    """``run_tests`` of each job (name -> learner files), two at a time: each run is a process that
    mostly waits on imports, and the suite must stay short."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(run_tests, module, files, folder / name, stop_first) for name, files in jobs.items()}
        return {name: f.result() for name, f in futures.items()}


def test_bug_variants_fail_with_their_message(module, tmp_path):
    jobs = {bug.id: reference_files(module) | {bug.file: module.variant(bug)} for bug in module.bugs}
    results = run_many(module, jobs, tmp_path)
    for bug in module.bugs:
        res = results[bug.id]
        assert res["status"] != "pass", f"{module.name}: bug {bug.id} passes\n{describe(res)}"
        assert any(bug.expect in t["message"] for t in res["tests"] if t["status"] != "pass"), (
            f"{module.name}: no failure of bug {bug.id} says {bug.expect!r}\n{describe(res)}")


def test_trivially_wrong_answers_fail(module, tmp_path):
    every = {f"all{k}": {f: trivial(module, f, code) for f in module.files} for k, code in enumerate(TRIVIAL)}
    for name, res in run_many(module, every, tmp_path).items():
        passed = [t["name"] for t in res["tests"] if t["status"] == "pass"]
        assert not passed, f"{module.name}: every block `{TRIVIAL[int(name[3:])]}` passes {passed}"
    one = {f"{b.id}-{k}": reference_files(module) | {f: trivial(module, f, code, only=b.id)}
           for k, code in enumerate(TRIVIAL) for f in module.files
           for b in blocks(module.solution(f).splitlines(keepends=True))}
    for name, res in run_many(module, one, tmp_path, stop_first=True).items():
        block, k = name.rsplit("-", 1)
        assert res["status"] != "pass", f"{module.name}: block {block} as `{TRIVIAL[int(k)]}` passes every test"


@pytest.mark.slow
def test_reference_passes_three_times(module, tmp_path):
    for k in range(3):
        res = run_tests(module, reference_files(module), tmp_path / f"run{k}")
        assert res["status"] == "pass", describe(res)
        assert res["seconds"] < 60
