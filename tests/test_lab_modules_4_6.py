"""The authoring check of Lab modules 4–6, run directly (without the Lab's engine).

For each module it writes learner folders as a test run does — the learner's files, the visible
and hidden tests flat in ``tests/`` — and runs pytest there in a subprocess with the folder first
on ``sys.path``:

* the reference answer passes every test (3 runs in the slow test);
* the generated stub fails on assertions or ``NotImplementedError`` only, and no test passes;
* every bug variant fails with a message containing its ``expect``;
* the trivially wrong answers (each block's body ``return 0``, ``pass``, ``return <first argument>``)
  pass no test when all blocks are wrong at once, and fail the run one block at a time.

The many small variants of a module run in one subprocess, one ``pytest.main`` per folder (with the
folder's modules forgotten between runs): a Python start with PyTorch per variant would take minutes.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from llm_foundry.lab.module import Module, blocks, load_module, MODULES_DIR

SRC = Path(__file__).resolve().parents[1] / "src"
MODULES = ["04_dataloader", "05_model", "06_optim"]
ASSERTION_LIKE = ("AssertionError", "NotImplementedError")

# Runs pytest once per folder given on the command line, in this one process.
RUNNER = r"""
import os, sys, pytest
for folder in sys.argv[1:]:
    os.chdir(folder)
    sys.path.insert(0, folder)
    pytest.main(["-q", "-p", "no:cacheprovider", "--rootdir", folder, "--junitxml", os.path.join(folder, "junit.xml"),
                 "tests"])
    sys.path.remove(folder)
    for name, mod in list(sys.modules.items()):
        if (getattr(mod, "__file__", None) or "").startswith(folder):
            del sys.modules[name]
"""


def write_run(module: Module, folder: Path, files: dict[str, str]) -> Path:
    """A run folder as the engine makes it: learner files at the top, every test flat in tests/."""
    (folder / "tests").mkdir(parents=True)
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    for test in module.tests() + module.tests(hidden=True):
        (folder / "tests" / test.name).write_text(test.read_text(encoding="utf-8"), encoding="utf-8")
    return folder


def run_folders(folders: list[Path]) -> list[dict[str, tuple[str, str]]]:
    """Run each folder's tests; per folder: test name -> (pass|fail|error, message)."""
    env = dict(os.environ, PYTHONPATH=str(SRC), OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
    subprocess.run([sys.executable, "-c", RUNNER, *map(str, folders)], env=env, capture_output=True, timeout=900)
    results = []
    for folder in folders:
        out = {}
        xml = folder / "junit.xml"
        if not xml.is_file():
            results.append({"<run>": ("error", "no junit.xml")})
            continue
        for case in ET.parse(xml).getroot().iter("testcase"):
            status, message = "pass", ""
            for tag in ("failure", "error"):
                node = case.find(tag)
                if node is not None:
                    message = node.get("message", "")
                    status = "fail" if tag == "failure" and message.startswith(ASSERTION_LIKE) else "error"
            out[case.get("name", "?")] = (status, message)
        results.append(out or {"<collection>": ("error", xml.read_text()[:2000])})
    return results


def replace_blocks(module: Module, file: str, code_of) -> str:
    """``file``'s solution with each block's body replaced by ``code_of(block, first_argument)``
    (None: keep the reference body), markers removed."""
    text = module.solution(file)
    lines = text.splitlines(keepends=True)
    tree = ast.parse(text)
    out, last = [], 0
    for b in blocks(lines):
        fn = min((n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
                  and n.lineno <= b.start <= n.end_lineno), key=lambda n: n.end_lineno - n.lineno)
        args = [a.arg for a in fn.args.posonlyargs + fn.args.args if a.arg not in ("self", "cls")]
        code = code_of(b, args[0] if args else "None")
        out += lines[last:b.start - 1]
        out += lines[b.start - 1:b.end + 1] if code is None else [textwrap.indent(code + "\n", b.indent)]
        last = b.end + 1
    out += lines[last:]
    marker = ("# BEGIN SOLUTION", "# END SOLUTION", "# STUB:")
    return "".join(l for l in out if not l.strip().startswith(marker))


TRIVIAL = {"return 0": lambda arg: "return 0", "pass": lambda arg: "pass", "return arg": lambda arg: f"return {arg}"}


def variants(module: Module) -> list[tuple[str, dict[str, str], str]]:
    """(name, files, kind) for the stub, every bug, and every trivially wrong answer."""
    reference = {f: module.reference(f) for f in module.files}
    out = [("stub", {f: module.stub(f) for f in module.files}, "stub")]
    for bug in module.bugs:
        out.append((f"bug {bug.id}", dict(reference, **{bug.file: module.variant(bug)}), f"bug:{bug.id}"))
    for kind, body in TRIVIAL.items():
        out.append((f"all blocks {kind}", {f: replace_blocks(module, f, lambda b, a: body(a)) for f in module.files},
                    "all"))
        for file in module.files:
            for block in blocks(module.solution(file).splitlines(keepends=True)):
                files = dict(reference, **{file: replace_blocks(
                    module, file, lambda b, a, target=block.id: body(a) if b.id == target else None)})
                out.append((f"block {file}:{block.id} {kind}", files, "one"))
    return out


@pytest.mark.parametrize("name", MODULES)
def test_module_texts_and_catalogue(name):
    """The folder format of the shared design: texts in both languages, ≥ 3 concrete hints per
    task, ≥ 3 reflection questions with answers, ≥ 3 bugs naming real blocks, figures that exist."""
    module = load_module(MODULES_DIR / name)
    assert not (module.path / "__init__.py").exists()
    for kind in ("intro", "task"):
        for lang in ("en", "zh"):
            assert len(module.text(kind, lang)) > 500, f"{name}: {kind}.{lang}.md is too short"
    for field in ("minutes", "library", "goals"):
        assert module.meta.get(field), f"{name}: module.yaml has no {field}"
    for path in module.meta["library"]:
        assert (SRC / "llm_foundry" / path).exists(), f"{name}: library path {path} does not exist"
    assert module.tasks
    for task in module.tasks:
        assert len(task["hints"]) >= 3 and all(h["en"] and h["zh"] for h in task["hints"]), task["id"]
    assert len(module.reflection) >= 3
    for r in module.reflection:
        assert r["question"]["en"] and r["question"]["zh"] and r["answer"]["en"] and r["answer"]["zh"]
    assert len(module.bugs) >= 3
    for bug in module.bugs:
        assert bug.feedback["en"] and bug.feedback["zh"] and bug.expect
        module.variant(bug)  # names a real block
    for lang in ("en", "zh"):
        for line in module.text("intro", lang).splitlines():
            if "](figures/" in line:
                target = line.split("](figures/", 1)[1].split(")", 1)[0]
                assert (module.path / "figures" / target).is_file(), f"{name}: missing figure {target}"


@pytest.mark.parametrize("name", MODULES)
def test_module_authoring_check(name, tmp_path):
    """Stub, bug variants and trivially wrong answers fail as the shared design demands; the
    reference passes once (three times in the slow test)."""
    module = load_module(MODULES_DIR / name)
    runs = [("reference", {f: module.reference(f) for f in module.files}, "reference")] + variants(module)
    folders = [write_run(module, tmp_path / f"v{i}", files) for i, (_, files, _) in enumerate(runs)]
    problems = []
    for (label, _, kind), result in zip(runs, run_folders(folders)):
        passed = [t for t, (s, _) in result.items() if s == "pass"]
        if kind == "reference":
            if len(passed) != len(result):
                problems.append(f"reference: {json.dumps({t: r for t, r in result.items() if r[0] != 'pass'})[:3000]}")
        elif kind == "stub":
            if passed or any(s != "fail" for s, _ in result.values()):
                problems.append(f"stub: passed {passed}, errors {[(t, m[:200]) for t, (s, m) in result.items() if s != 'fail']}")
        elif kind.startswith("bug:"):
            expect = next(b.expect for b in module.bugs if b.id == kind[4:])
            if not any(s != "pass" and expect in m for s, m in result.values()):
                problems.append(f"{label}: no failure says {expect!r}: {[m[:300] for s, m in result.values() if s != 'pass']}")
        elif kind == "all":
            if passed:
                problems.append(f"{label}: tests pass: {passed}")
        elif len(passed) == len(result):
            problems.append(f"{label}: the run passes")
    assert not problems, "\n".join(problems)


@pytest.mark.slow
@pytest.mark.parametrize("name", MODULES)
def test_module_reference_passes_three_times(name, tmp_path):
    """The reference passes 3 of 3 runs, each in its own Python process."""
    module = load_module(MODULES_DIR / name)
    for i in range(3):
        folder = write_run(module, tmp_path / f"r{i}", {f: module.reference(f) for f in module.files})
        (result,) = run_folders([folder])
        assert all(s == "pass" for s, _ in result.values()), result
