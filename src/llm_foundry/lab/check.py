"""The authoring check of a module (as rustlings' ``dev check``): `foundry lab check [N]`, and one
test per module in the suite.

A module is sound when:

- its source is whole: titles, texts and hints in en and zh, ≥ 3 hints per task, ≥ 3
  reflection questions with model answers, visible tests, every learner file with solution
  blocks, every bug naming a real block, every ``library`` path present in the package;
- the reference passes 3 runs of 3 (``reference_runs``), each in under :data:`REFERENCE_S` seconds;
- the untouched stub's run fails (``fail``: an assertion or "not written yet", never an import
  or syntax error) and no test passes on it;
- every bug variant fails with a message containing its ``expect``, and gets its own feedback
  (not that of an earlier bug whose ``expect`` the message contains too);
- trivially wrong answers — every block's body replaced by ``return 0``, by ``pass``, or by
  ``return <its first argument>`` — pass no test when all blocks are replaced at once, and fail
  the run when one block is replaced and the others are the reference.
"""

from __future__ import annotations

import ast
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

from ..utils.errors import FoundryError
from . import sandbox
from .module import Bug, Module, earlier_references
from .results import PACKAGE_DIR, run_batch, run_tests

REFERENCE_RUNS = 3
REFERENCE_S = 60.0
TRIVIAL = ("return 0", "pass", "return <first argument>")


@dataclass
class Finding:
    """One check of one module: ``ok``, and what was seen."""

    module: str
    check: str
    ok: bool
    detail: str = ""


def first_argument(source: str, line: int) -> str | None:
    """The first parameter (``self``/``cls`` skipped) of the innermost function around 1-based ``line``
    of ``source``; ``""`` for a function without one; None when ``line`` is in no function."""
    best = None
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.lineno <= line <= (node.end_lineno or 0):
            if best is None or node.lineno > best.lineno:
                best = node
    if best is None:
        return None
    args = [a.arg for a in best.args.posonlyargs + best.args.args + best.args.kwonlyargs]
    if args and args[0] in ("self", "cls"):
        args = args[1:]
    return args[0] if args else ""


def trivial_code(kind: str, module: Module, file: str, block_id: str) -> str | None:
    """The body ``kind`` (see :data:`TRIVIAL`) for a block, or None where it cannot stand (a
    ``return`` outside a function)."""
    if kind == "pass" or not file.endswith(".py"):
        return "pass"  # a learner file that is not Python (a SUMMARY.md) has no function: its block is emptied
    block = next(b for b in module.blocks(file) if b.id == block_id)
    arg = first_argument(module.solution(file), block.start)
    if arg is None:
        return None
    if kind == "return 0":
        return "return 0"
    return f"return {arg}" if arg else "return None"


def check_source(module: Module) -> list[str]:
    """What is missing or malformed in the module's source (empty: nothing)."""
    return _code_problems(module) + _text_problems(module)


def _text_problems(module: Module) -> list[str]:
    """What the learner reads: titles, texts, hints, reflection, bug feedback, library paths."""
    problems = []
    for lang in ("en", "zh"):
        if not module.title.get(lang):
            problems.append(f"no {lang} title")
        for kind in ("intro", "task"):
            if not (module.path / f"{kind}.{lang}.md").is_file():
                problems.append(f"no {kind}.{lang}.md")
    if not module.tasks:
        problems.append("no tasks")
    for task in module.tasks:
        hints = task.get("hints") or []
        if len(hints) < 3:
            problems.append(f"task {task.get('id')}: {len(hints)} hints (at least 3)")
        if any(not (isinstance(h, dict) and h.get("en") and h.get("zh")) for h in hints):
            problems.append(f"task {task.get('id')}: a hint lacks en or zh")
    if len(module.reflection) < 3:
        problems.append(f"{len(module.reflection)} reflection questions (at least 3)")
    for i, r in enumerate(module.reflection, 1):
        if not all(isinstance(r.get(k), dict) and r[k].get("en") and r[k].get("zh") for k in ("question", "answer")):
            problems.append(f"reflection {i}: a question or answer lacks en or zh")
    for bug in module.bugs:
        if not (bug.feedback.get("en") and bug.feedback.get("zh")):
            problems.append(f"bug {bug.id}: feedback lacks en or zh")
    for path in module.meta.get("library") or []:
        if not (PACKAGE_DIR / str(path).removeprefix("src/llm_foundry/")).exists():
            problems.append(f"library path {path} is not in the package")
    return problems


def _code_problems(module: Module) -> list[str]:
    """What the test runs need: visible tests, each learner file's solution with blocks, bugs naming
    real blocks. With one of these missing the runs cannot be made."""
    problems = []
    if not module.tests():
        problems.append("no visible tests")
    names = [t.name for t in module.tests() + module.tests(hidden=True)]
    if len(set(names)) != len(names):
        problems.append("a hidden test file has the name of a visible one")
    found: dict[str, set[str]] = {}
    for file in module.files:
        if not (module.path / "solution" / file).is_file():
            problems.append(f"no solution/{file}")
            continue
        try:
            found[file] = {b.id for b in module.blocks(file)}
        except FoundryError as e:
            problems.append(f"solution/{file}: {e}")
            continue
        if not found[file]:
            problems.append(f"solution/{file} has no solution block")
    for bug in module.bugs:
        if bug.block not in found.get(bug.file, ()):
            problems.append(f"bug {bug.id} names no block {bug.block!r} of a learner file")
    problems += _builds_on_problems(module)
    unknown = set(module.requires_layers) - set(sandbox.LAYERS)
    if unknown:
        problems.append(f"requires_layers names unknown layers {sorted(unknown)} (the layers: {', '.join(sandbox.LAYERS)})")
    return problems


def _builds_on_problems(module: Module) -> list[str]:
    """Each ``builds_on`` entry names a learner file of an earlier module of the same folder, and no
    two files of a run share a name."""
    try:
        names = earlier_references(module)
    except (FoundryError, KeyError, TypeError, ValueError) as e:
        return [f"builds_on: {e}"]
    if clash := set(names) & set(module.files):
        return [f"builds_on and files share the names {sorted(clash)}"]
    return []


def _judge_stub(r: dict) -> tuple[bool, str]:
    passing = [t["name"] for t in r["tests"] if t["status"] == "pass"]
    return (r["status"] == "fail" and not passing,
            f"status {r['status']}" + (f", passing: {passing}" if passing else "") + f": {r['message'][:300]}")


def _judge_bug(bug: Bug) -> Callable[[dict], tuple[bool, str]]:
    def judge(r: dict) -> tuple[bool, str]:
        failed = [t for t in r["tests"] if t["status"] != "pass"]
        if not any(bug.expect in t["message"] for t in failed):
            return False, f"status {r['status']}; no failure message contains {bug.expect!r}: {r['message'][:300]}"
        if not any(t.get("bug") == bug.id for t in failed):
            # its message also contains an earlier bug's `expect`: the learner would read that bug's feedback
            other = next(t.get("bug") for t in failed if bug.expect in t["message"])
            return False, (f"its failures get the feedback of bug {other} (whose expect matches too, and comes "
                           "first): make the expects tell them apart")
        return True, ""
    return judge


def _judge_none_pass(r: dict) -> tuple[bool, str]:
    passing = [t["name"] for t in r["tests"] if t["status"] == "pass"]
    return not passing, f"passing: {passing}"


def _judge_run_fails(r: dict) -> tuple[bool, str]:
    return r["status"] != "pass", "the run passes"


def check_module(module: Module, say: Callable[[str], None] | None = None, jobs: int | None = None,
                 reference_runs: int = REFERENCE_RUNS) -> list[Finding]:
    """Run every check on ``module``; ``say`` is told what runs (progress for the CLI).

    ``reference_runs`` whole timed runs of the reference must all pass (3 for an author, who
    wants flaky tests caught; the test suite passes 0: its walk, ``tests/test_lab_walk.py``, runs
    every module's reference through ``foundry lab test`` and holds it to the same bound).

    The reference runs go one after another (their durations are judged); the other runs are
    independent of each other and go ``jobs`` at a time (default: the CPUs, at most 4), each in its
    own sandbox.
    """
    out: list[Finding] = []
    say = say or (lambda _msg: None)

    def add(check: str, ok: bool, detail: str = "") -> None:
        out.append(Finding(module.name, check, ok, detail))
        timed = ok and check.startswith("reference run")  # an author sees how near the time bound each run is
        say(f"{'ok  ' if ok else 'FAIL'} {check}" + (f": {detail}" if detail and (timed or not ok) else ""))

    code = _code_problems(module)
    problems = code + _text_problems(module)
    add("source", not problems, "; ".join(problems))
    if code:  # the runs cannot be made; a text missing does not stop them (an author sees every problem)
        return out

    earlier = earlier_references(module)

    def run(files: dict[str, str], stop_first: bool = False) -> dict:
        full = {**earlier, **{f: module.reference(f) for f in module.files}}
        full.update(files)
        return run_tests(module, full, stop_first=stop_first)

    for i in range(reference_runs):
        r = run({})
        add(f"reference run {i + 1}/{reference_runs}", r["status"] == "pass" and r["duration_s"] < REFERENCE_S,
            f"{r['status']} in {r['duration_s']:.1f} s: {r['message'][:300]}")
    # every other run: (check, the learner files that differ from the reference, stop at the first failure, judge)
    plans: list[tuple[str, dict[str, str], bool, Callable[[dict], tuple[bool, str]]]] = [
        ("stub fails on assertions", {f: module.stub(f) for f in module.files}, False, _judge_stub)]
    plans += [(f"bug {bug.id}", {bug.file: module.variant(bug)}, False, _judge_bug(bug)) for bug in module.bugs]
    blocks = [(f, b.id) for f in module.files for b in module.blocks(f)]
    for kind in TRIVIAL:
        codes = {(f, b): trivial_code(kind, module, f, b) for f, b in blocks}
        codes = {k: c for k, c in codes.items() if c is not None}
        if not codes:
            continue
        everywhere = {f: module.replace(f, {b: c for (g, b), c in codes.items() if g == f}) for f in {f for f, _ in codes}}
        plans.append((f"`{kind}` everywhere passes no test", everywhere, False, _judge_none_pass))
        plans += [(f"`{kind}` in block {b} fails", {f: module.replace(f, {b: c})}, True, _judge_run_fails)
                  for (f, b), c in codes.items()]  # only "the run fails" matters: stop at the first failure
    # The other runs go in batches, one sandbox each (a batch imports torch once and forks a child per
    # run: see results.run_batch); `jobs` batches at a time, in threads, each waiting on its sandbox.
    jobs = jobs or min(4, os.cpu_count() or 1)
    batches = [plans[i::jobs] for i in range(jobs) if plans[i::jobs]]

    def run_plans(batch: list) -> list[dict]:
        variants = [({**earlier, **{f: module.reference(f) for f in module.files}, **files}, stop)
                    for _, files, stop, _ in batch]
        return run_batch(module, variants)

    with ThreadPoolExecutor(len(batches) or 1) as pool:
        done = {id(plan): r for batch, results in zip(batches, pool.map(run_plans, batches))
                for plan, r in zip(batch, results)}
    for plan in plans:
        check, _, _, judge = plan
        add(check, *judge(done[id(plan)]))
    return out
