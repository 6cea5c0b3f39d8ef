"""The test run inside the sandbox: pytest, with a plugin that writes ``results.json``.

    python -m llm_foundry.lab.runner --module 2 --out results.json --hidden test_merge_order.py

The harness (``lab/results.py``) starts this in a fresh run folder that holds the learner's files
and the module's tests under ``tests/``; the run folder is the working directory, pytest's rootdir
and the first entry of ``sys.path`` (``python -m`` puts it there), so a test does ``from bpe
import train``; ``tests/`` is the second, so a test may import another's helpers. Per test the plugin records:

- ``pass``;
- ``fail``: an AssertionError (the module's teaching assertions say call, expected, actual and
  the learner's line), or a NotImplementedError from the learner's code ("`merge` is not written
  yet (your bpe.py, line 14)");
- ``error``: anything else, named with the learner's file and line (a SyntaxError in their file,
  an import that fails, a TypeError, running out of memory or recursion).

``results.json`` is rewritten (atomically) before and after every test, with ``running`` naming
the test under way, so a run the sandbox stops (time, memory) still says which test it was in.
The harness trusts nothing in it beyond its shape: it recomputes the status and adds the sandbox.
"""

from __future__ import annotations

import argparse
import inspect
import os
import random
import sys
import time
import traceback
from pathlib import Path

import pytest

from ..utils.io import atomic_write_json
from .text import say

OUTPUT_CAP = 2000  # characters of a test's captured output kept in the results (as Exercism: enough to read)


def _cap(text: str, cap: int = OUTPUT_CAP) -> str:
    return text if len(text) <= cap else text[:cap] + f"\n… ({len(text) - cap} more characters)"


class ResultsPlugin:
    """Collects every test's outcome and keeps ``results.json`` up to date."""

    def __init__(self, root: Path, module: int, out: Path, hidden: set[str], lang: str):
        self.root, self.module, self.out, self.hidden, self.lang = root, module, out, hidden, lang
        self.tests: dict[str, dict] = {}
        self.excinfo: dict[str, BaseException] = {}
        self.code: dict[str, str] = {}
        self.running: str | None = None
        self.skipped = 0
        self.start = time.monotonic()

    # -------------------------------------------------------------- where the learner's code failed
    def _learner_file(self, filename: str) -> str | None:
        """The learner file's name if ``filename`` is one (in the run folder, not a test)."""
        try:
            rel = Path(filename).resolve().relative_to(self.root)
        except (ValueError, OSError):
            return None
        return None if rel.parts[0] == "tests" else rel.as_posix()

    def _where(self, file: str, line: int | None) -> str:
        return say(self.lang, f" (your {file}, line {line})", f"（你的 {file} 第 {line} 行）")

    def classify(self, e: BaseException) -> tuple[str, str, str]:
        """``(status, message, error class)`` of an exception raised during a test or its collection."""
        if type(e).__name__ == "CollectError" and e.__cause__ is not None:
            e = e.__cause__  # pytest wraps what importing a test file raised: the learner's error is the cause
        lang = self.lang
        tb = traceback.extract_tb(e.__traceback__)
        frames = [f for f in tb if self._learner_file(f.filename)]
        where = self._where(self._learner_file(frames[-1].filename), frames[-1].lineno) if frames else ""
        kind = type(e).__name__
        if isinstance(e, NotImplementedError) and tb and self._learner_file(tb[-1].filename):
            # raised by the learner's own file (the stub's `raise NotImplementedError`), not by a library
            name = str(e) or (frames[-1].name if frames else "?")
            return "fail", say(lang, f"`{name}` is not written yet{where}", f"`{name}` 还没有写{where}"), kind
        if isinstance(e, AssertionError):
            return "fail", (str(e) or "".join(traceback.format_exception_only(e)).strip()) + where, kind
        if isinstance(e, SyntaxError) and e.filename and self._learner_file(e.filename):
            code = f"\n    {e.text.strip()}" if e.text else ""
            return "error", f"{kind}: {e.msg}{self._where(self._learner_file(e.filename), e.lineno)}{code}", kind
        if isinstance(e, ImportError) and e.name and (self.root / f"{e.name}.py").exists():
            return "error", say(lang, f"{e} — did you rename or delete it in your {e.name}.py?",
                                f"{e}——你是不是在 {e.name}.py 里改了名字或删掉了它？"), kind
        if isinstance(e, MemoryError):
            return "error", say(lang, f"your code ran out of memory (the sandbox's limit){where}: a list or tensor "
                                      "that grows without end?",
                                f"你的代码用光了内存（沙箱的上限）{where}：是不是有个列表或张量无限增长？"), kind
        if isinstance(e, RecursionError):
            return "error", say(lang, f"RecursionError{where}: a function that calls itself without end?",
                                f"RecursionError{where}：是不是函数无休止地调用自己？"), kind
        return "error", f"{kind}: {e}{where}", kind

    # -------------------------------------------------------------- pytest hooks
    def pytest_collection_modifyitems(self, items) -> None:
        for item in items:
            try:
                self.code[item.nodeid] = inspect.getsource(item.obj)
            except (TypeError, OSError, AttributeError):
                self.code[item.nodeid] = ""

    def pytest_exception_interact(self, node, call, report) -> None:
        # (a collection error: called before pytest_collectreport)
        self.excinfo.setdefault(report.nodeid, call.excinfo.value)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item, call):
        # (a test's error: pytest_runtest_logreport comes before pytest_exception_interact)
        report = yield
        if call.excinfo is not None and report.failed:
            self.excinfo.setdefault(report.nodeid, call.excinfo.value)
        return report

    def pytest_collectreport(self, report) -> None:
        if report.failed:
            self._record(report, report.nodeid)

    def pytest_runtest_logstart(self, nodeid, location) -> None:
        self.running = nodeid
        self.write()

    def pytest_runtest_setup(self, item) -> None:
        # Fixed seeds before every test: a test's result never depends on the tests before it.
        random.seed(0)
        if (numpy := sys.modules.get("numpy")) is not None:
            numpy.random.seed(0)
        if (torch := sys.modules.get("torch")) is not None:
            torch.manual_seed(0)

    def pytest_runtest_logreport(self, report) -> None:
        if report.skipped and report.when != "teardown":
            self.skipped += 1
        elif report.failed or report.when == "call":
            if report.nodeid not in self.tests or report.failed and self.tests[report.nodeid]["status"] == "pass":
                self._record(report, report.nodeid)

    def pytest_runtest_logfinish(self, nodeid, location) -> None:
        self.running = None
        self.write()

    # -------------------------------------------------------------- results
    def _record(self, report, nodeid: str) -> None:
        name = nodeid.removeprefix("tests/")
        file = name.split("::")[0]
        entry = {"name": name, "status": "pass", "message": "", "error_class": None,
                 "output": _cap((getattr(report, "capstdout", "") or "") + (getattr(report, "capstderr", "") or "")),
                 "test_code": "" if file in self.hidden else self.code.get(nodeid, ""), "hidden": file in self.hidden}
        if report.failed:
            error = self.excinfo.get(nodeid)
            if error is not None:
                entry["status"], entry["message"], entry["error_class"] = self.classify(error)
                # the run folder is a temporary name: the learner knows the file by its own name
                entry["message"] = entry["message"].replace(f"{self.root}/", "")
            else:
                entry["status"], entry["message"] = "error", _cap(str(report.longrepr), 4000)
            if getattr(report, "when", "call") in ("setup", "teardown") and entry["status"] == "fail":
                entry["status"] = "error"
        self.tests[nodeid] = entry

    def write(self, exit_code: int | None = None) -> None:
        atomic_write_json(self.out, {
            "version": 1, "module": self.module, "running": self.running,
            "duration_s": round(time.monotonic() - self.start, 3), "skipped": self.skipped,
            "exit_code": exit_code, "tests": list(self.tests.values())})


def run_batch(variants: list[tuple[str, bool]], argv: list[str], wall_s: float) -> None:
    """Run the tests once in each variant folder (the authoring check's many runs of one module),
    each in a child forked from this process, which has imported torch once for all of them.

    A child is a fresh copy of this process: nothing one variant imports or changes reaches the
    next. Each gets ``wall_s`` seconds of wall clock before it is killed with its process group;
    how each ended is written to the variant's ``ended.json`` (outcome ``exited``, ``timeout``
    or ``killed``, and the exit status), which the harness reads instead of the sandbox's outcome.

    Args:
        variants: ``(folder, stop at the first failure)`` for each run, folders relative to here.
        argv: the arguments of :func:`main` common to every run.
        wall_s: each run's wall-clock limit.
    """
    import signal

    try:  # the imports the variants share, paid once (a module without torch just runs without them)
        import numpy  # noqa: F401
        import torch  # noqa: F401
    except ImportError:
        pass
    root = Path.cwd().resolve()
    for folder, stop_first in variants:
        start = time.monotonic()
        pid = os.fork()
        if pid == 0:  # the child: one run, as `main` alone would do it in this folder
            code = 1
            try:
                os.setpgid(0, 0)
                os.chdir(root / folder)
                sys.path[0] = str(root / folder)
                code = main(argv + (["--exitfirst"] if stop_first else []))
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        outcome, status = "timeout", None
        while time.monotonic() - start < wall_s:
            done, wait_status = os.waitpid(pid, os.WNOHANG)
            if done:
                status = os.waitstatus_to_exitcode(wait_status)
                outcome = "exited" if status >= 0 else "killed"
                break
            time.sleep(0.02)
        else:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.waitpid(pid, 0)
        atomic_write_json(root / folder / "ended.json", {"outcome": outcome, "returncode": status,
                                                         "duration_s": round(time.monotonic() - start, 3)})


def main(argv: list[str] | None = None) -> int:
    """Run the tests under ``tests/`` of the current folder; write ``--out``. With ``--batch``,
    once in each variant folder it names (see :func:`run_batch`)."""
    p = argparse.ArgumentParser(prog="python -m llm_foundry.lab.runner")
    p.add_argument("--module", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--hidden", default="", help="comma-separated file names of the hidden tests")
    p.add_argument("--lang", default="en")
    p.add_argument("--exitfirst", action="store_true", help="stop at the first test that does not pass")
    p.add_argument("--batch", default="", help="FOLDER:0|1,...: run in each folder (1: stop at the first failure)")
    p.add_argument("--wall", type=float, default=60.0, help="with --batch: each run's wall-clock limit (s)")
    args = p.parse_args(argv)
    if args.batch:
        variants = [(item.rsplit(":", 1)[0], item.endswith(":1")) for item in args.batch.split(",")]
        common = ["--module", str(args.module), "--out", args.out, "--hidden", args.hidden, "--lang", args.lang]
        run_batch(variants, common, args.wall)
        return 0
    root = Path.cwd().resolve()
    plugin = ResultsPlugin(root, args.module, (root / args.out), set(filter(None, args.hidden.split(","))), args.lang)
    plugin.write()
    # importlib mode: pytest leaves sys.path alone, so the run folder stays its first entry (a test's
    # folder put in front would let a test file's name hide a learner file's). The tests' folder comes
    # second, so a hidden test may import the helpers of a visible one (`from test_bpe import ...`),
    # as it could in the learner's workspace.
    sys.path.insert(1, str(root / "tests"))
    code = pytest.main(["-q", "-p", "no:cacheprovider", "--import-mode=importlib", "-c", str(root / "pytest.ini"),
                        "--rootdir", str(root), "tests"] + (["-x"] if args.exitfirst else []), plugins=[plugin])
    plugin.write(exit_code=int(code))
    return 0


if __name__ == "__main__":
    sys.exit(main())
