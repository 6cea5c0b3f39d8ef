"""A test run, from the learner's files to one ``results.json`` object (as Exercism's runners write).

    results = run_tests(module, read_learner_files(module, workspace))

The contract the CLI and the web app both render::

    {"version": 1, "module": N, "status": "pass" | "fail" | "error", "message": "...",
     "duration_s": 1.2, "error_class": "AssertionError" | "timeout" | ... | null,
     "sandbox": {"layers": {"session": "on", "cgroup": "off: <why>", ...}, "degraded": bool},
     "tests": [{"name", "status", "message", "output", "test_code", "hidden": bool,
                "error_class", "bug": id (when the failure is a catalogued wrong answer)}]}

How a run goes: a fresh run folder gets the learner's files and the module's visible and hidden
tests; ``python -m llm_foundry.lab.runner`` runs pytest there through :func:`lab.sandbox.run`
(the only way learner code is ever run); its ``results.json`` is read without following links and
checked, the status recomputed (a run passes only when every test ran and passed), a sandbox
stop (time, memory, CPU, output, a signal) turned into plain words, and each failure that matches
a bug variant's ``expect`` gets that variant's feedback.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import site
import sys
import tempfile
from pathlib import Path
from typing import Callable

from ..utils.errors import FoundryError
from . import sandbox
from .module import MODULES_DIR, Module, all_modules
from .progress import lab_home
from .text import pick, say

RESULTS = "results.json"
MAX_RESULTS_BYTES = 8 << 20
STATUSES = ("pass", "fail", "error")
PACKAGE_DIR = Path(__file__).resolve().parents[1]  # the installed llm_foundry


def limits_for(module: Module) -> sandbox.Limits:
    """The sandbox limits of ``module``'s runs: the defaults, with the module's ``limits:`` overrides."""
    overrides = module.meta.get("limits") or {}
    known = {f.name for f in dataclasses.fields(sandbox.Limits)}
    if not isinstance(overrides, dict) or set(overrides) - known:
        raise FoundryError(f"module {module.name}: limits may set only {sorted(known)}")
    return dataclasses.replace(sandbox.Limits(), **overrides)


def _hidden_paths() -> tuple[Path, ...]:
    """What learner code must not read: every module's reference solution, and the progress database."""
    folders = {MODULES_DIR, *(m.path.parent for m in all_modules())}
    solutions = {p / "solution" for f in folders if f.is_dir() for p in f.iterdir() if (p / "solution").is_dir()}
    return tuple(sorted(solutions)) + (lab_home(),)


def sandbox_spec(run: Path, module: Module, hidden_tests: list[str], lang: str,
                 limits: sandbox.Limits | None = None, stop_first: bool = False) -> sandbox.SandboxSpec:
    """The sandbox spec of a test run in the run folder ``run``."""
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(run), "TMPDIR": str(run / "tmp"),
           "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1",
           "PYTHONIOENCODING": "utf-8", "OMP_NUM_THREADS": "1", "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    sites = {Path(p).resolve() for p in [*site.getsitepackages(), site.getusersitepackages()]}
    if PACKAGE_DIR.parent not in sites:  # a checkout, not an install: the package comes from its parent
        env["PYTHONPATH"] = str(PACKAGE_DIR.parent)
    readonly = tuple(dict.fromkeys(Path(p).resolve() for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, PACKAGE_DIR)))
    argv = [sys.executable, "-B", "-m", "llm_foundry.lab.runner", "--module", str(module.number), "--out", RESULTS,
            "--hidden", ",".join(hidden_tests), "--lang", lang] + (["--exitfirst"] if stop_first else [])
    return sandbox.SandboxSpec(argv=argv, workspace=run, readonly=readonly, hidden=_hidden_paths(), env=env,
                               limits=limits or limits_for(module))


def make_run_folder(module: Module, files: dict[str, bytes | str], run: Path | None = None) -> tuple[Path, list[str]]:
    """A fresh run folder (``run``, or a new temporary one) with the learner's files and every
    test; returns it and the hidden tests' names."""
    if run is None:
        run = Path(tempfile.mkdtemp(prefix=f"foundry-lab-{module.number:02d}-"))
    (run / "tests").mkdir(parents=True)
    (run / "tmp").mkdir()
    (run / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")
    for name, data in files.items():
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    hidden = []
    for test in module.tests() + module.tests(hidden=True):
        (run / "tests" / test.name).write_bytes(test.read_bytes())
        if test.parent.name == "hidden":
            hidden.append(test.name)
    return run, hidden


def run_tests(module: Module, files: dict[str, bytes | str], lang: str = "en", layers: set[str] | None = None,
              limits: sandbox.Limits | None = None, stop_first: bool = False,
              on_output: Callable[[str, bytes], None] | None = None) -> dict:
    """Run ``module``'s tests on the learner's ``files`` (name -> content) in the sandbox.

    Args:
        module: the module.
        files: the learner's files, e.g. from :func:`workspace.read_learner_files`.
        lang: the language of the messages (en, zh).
        layers: only these sandbox layers (a degraded mode, for tests); None: every available one.
        limits: instead of the module's limits.
        stop_first: stop at the first test that does not pass (the authoring check, where only "the
            run fails" matters); the results then list the tests up to that one.

    Returns:
        the results object (see the module docstring).
    """
    state = sandbox.layer_state(layers)
    missing = [name for name in module.requires_layers if state.get(name) != "on"]
    if missing:  # refused before anything runs: this module executes code a model wrote
        why = say(lang, "; ", "；").join(_why_off(name, state.get(name, "off"), lang) for name in missing)
        message = say(lang, f"module {module.number} runs code a model wrote, so its tests run only with the sandbox "
                            f"layers {', '.join(module.requires_layers)}; off here: {why}. This is the lab's setup, "
                            "not your code: docs/en/lab-sandbox.md says what each layer needs",
                      f"模块 {module.number} 会执行模型写出的代码，所以它的测试只在沙箱层 "
                      f"{', '.join(module.requires_layers)} 都启用时运行；这里未启用：{why}。这是实验环境的设置问题，"
                      "不是你的代码的问题：docs/zh/lab-sandbox.md 说明了每一层需要什么")
        return {"version": 1, "module": module.number, "status": "error", "message": message, "duration_s": 0.0,
                "error_class": "sandbox-refused", "sandbox": {"layers": state, "degraded": True}, "tests": []}
    run, hidden = make_run_folder(module, files)
    try:
        dir_fd = os.open(run, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            spec = sandbox_spec(run, module, hidden, lang, limits, stop_first)
            outcome = sandbox.run(spec, layers=layers, on_output=on_output)
            raw, problem = read_raw_results(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        shutil.rmtree(run, ignore_errors=True)
    return finish(module, outcome, raw, problem, hidden, spec.limits, lang)


def run_batch(module: Module, variants: list[tuple[dict[str, bytes | str], bool]], lang: str = "en",
              layers: set[str] | None = None) -> list[dict]:
    """Run ``module``'s tests on each variant of the learner's files, in one sandbox (the authoring
    check's many runs): one run folder with a folder per variant, and a runner that imports torch
    once and forks a child per variant (``runner.run_batch``). Each child has the module's wall-clock
    limit; the batch's limits are the module's, its time and CPU scaled by the number of variants.

    A learner's own run never goes through here: it is always a whole process of its own
    (:func:`run_tests`), and so are the reference runs the check times.

    Args:
        variants: ``(files, stop at the first failure)`` per run.

    Returns:
        a results object per variant, as :func:`run_tests` gives.
    """
    state = sandbox.layer_state(layers)
    if [name for name in module.requires_layers if state.get(name) != "on"]:
        refused = run_tests(module, {}, lang, layers)  # the refusal, without running anything
        return [refused for _ in variants]
    limits = limits_for(module)
    n = len(variants)
    batch_limits = dataclasses.replace(limits, wall_s=limits.wall_s * n + 30, cpu_s=limits.cpu_s * n + 30)
    root = Path(tempfile.mkdtemp(prefix=f"foundry-lab-{module.number:02d}-batch-"))
    try:
        (root / "tmp").mkdir()
        names, hidden = [], []
        for i, (files, _) in enumerate(variants):
            run, hidden = make_run_folder(module, files, root / f"v{i}")
            names.append(run.name)
        spec = sandbox_spec(root, module, hidden, lang, batch_limits)
        spec = dataclasses.replace(spec, argv=spec.argv + [
            "--batch", ",".join(f"{name}:{int(stop)}" for name, (_, stop) in zip(names, variants)),
            "--wall", str(limits.wall_s)])
        outcome = sandbox.run(spec, layers=layers)
        out = []
        for name in names:
            dir_fd = os.open(root / name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
            try:
                raw, problem = read_raw_results(dir_fd)
                ended = _read_ended(dir_fd)
            finally:
                os.close(dir_fd)
            one = outcome if ended is None else dataclasses.replace(
                outcome, outcome=ended["outcome"], returncode=ended["returncode"], duration_s=ended["duration_s"])
            out.append(finish(module, one, raw, problem, hidden, limits, lang))
        return out
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _read_ended(dir_fd: int) -> dict | None:
    """A batch child's ``ended.json`` (how it ended), or None where there is none (the whole batch was stopped)."""
    try:
        ended = json.loads(sandbox.read_result("ended.json", 4096, dir_fd=dir_fd))
    except (FoundryError, ValueError):
        return None
    if not (isinstance(ended, dict) and ended.get("outcome") in ("exited", "timeout", "killed")):
        return None
    return ended


def _why_off(name: str, state: str, lang: str) -> str:
    """``name (why it is off)`` for a refusal: a layer turned off on purpose says how to turn it on."""
    why = state.removeprefix("off: ").removeprefix("off")
    if why == "disabled by the caller":
        if name in os.environ.get(sandbox.OFF_VAR, ""):
            return say(lang, f"{name} (turned off by {sandbox.OFF_VAR}; unset it to turn it on)",
                       f"{name}（被 {sandbox.OFF_VAR} 关闭；取消这个变量即可重新启用）")
        return say(lang, f"{name} (turned off for this run)", f"{name}（本次运行关闭）")
    return say(lang, f"{name} ({why or 'unavailable'})", f"{name}（本机不可用：{why or '原因未知'}）")


def read_raw_results(dir_fd: int) -> tuple[dict | None, str]:
    """The runner's ``results.json`` in the run folder ``dir_fd`` (read by :func:`sandbox.read_result`:
    no link followed, a plain file with one name, bounded); ``(None, why)`` when it is missing, a
    link, not a plain file, too large or malformed."""
    try:
        data = sandbox.read_result(RESULTS, MAX_RESULTS_BYTES, dir_fd=dir_fd)
    except FoundryError as e:
        return None, str(e).removeprefix(f"{RESULTS} ")
    try:
        raw = json.loads(data)
    except (ValueError, RecursionError):
        return None, "not valid JSON"
    if not (isinstance(raw, dict) and isinstance(raw.get("tests"), list)
            and all(isinstance(t, dict) and isinstance(t.get("name"), str) and t.get("status") in STATUSES
                    for t in raw["tests"])
            and (raw.get("running") is None or isinstance(raw["running"], str))):
        return None, "malformed"
    return raw, ""


def _size(n: float) -> str:
    return f"{n / (1 << 30):g} GiB" if n >= 1 << 30 else f"{n / (1 << 20):g} MiB"


def stop_message(outcome: sandbox.SandboxResult, limits: sandbox.Limits, lang: str) -> str:
    """Plain words for a run the sandbox stopped (empty when it ended by itself)."""
    kind = outcome.outcome
    if kind == "timeout":
        return say(lang, f"stopped after {limits.wall_s:g} s, the time limit: does a loop never end (check its exit "
                         "condition), or is the code far too slow?",
                   f"运行超过 {limits.wall_s:g} 秒的时间上限，被停止：是不是有个循环永远不结束（检查它的退出条件），"
                   "或者代码慢得太多？")
    if kind == "cpu":
        return say(lang, f"stopped after {limits.cpu_s} s of processor time, the limit: an endless loop, or far "
                         "too much computation?",
                   f"占用处理器超过 {limits.cpu_s} 秒的上限，被停止：是不是死循环，或计算量大得太多？")
    if kind == "memory":
        return say(lang, f"stopped: it used more than {_size(limits.memory_bytes)} of memory, the limit: a list or "
                         "tensor that grows without end?",
                   f"内存用量超过 {_size(limits.memory_bytes)} 的上限，被停止：是不是有个列表或张量无限增长？")
    if kind == "output":
        return say(lang, f"stopped: it printed more than {_size(limits.output_bytes)}, the limit: a print inside "
                         "a loop?",
                   f"输出超过 {_size(limits.output_bytes)} 的上限，被停止：是不是在循环里 print？")
    if kind == "sandbox":  # the sandbox could not start the tests at all: not the learner's doing
        why = getattr(outcome, "error", "") or say(lang, "no reason given", "原因不明")
        return say(lang, f"not run: the sandbox could not start them ({why}); this is a problem of the lab's setup, "
                         "not of your code",
                   f"未能运行：沙箱无法启动测试（{why}）；这是实验室环境的问题，不是你的代码的问题")
    if kind == "killed":
        return say(lang, f"the test process was killed (exit status {outcome.returncode}): by your code, or by the "
                         "system for using too much memory",
                   f"测试进程被杀死（退出状态 {outcome.returncode}）：是你的代码做的，或是系统因内存用量过大")
    return ""


def finish(module: Module, outcome: sandbox.SandboxResult, raw: dict | None, problem: str, hidden: list[str],
           limits: sandbox.Limits, lang: str) -> dict:
    """The results object of a run, from what the sandbox and the runner reported."""
    tests = []
    for t in (raw or {}).get("tests", []):
        name = t["name"]
        tests.append({"name": name, "status": t["status"], "message": str(t.get("message") or ""),
                      "output": str(t.get("output") or ""), "test_code": str(t.get("test_code") or ""),
                      "hidden": name.split("::")[0] in hidden, "error_class": t.get("error_class")})
    stop = stop_message(outcome, limits, lang)
    running = (raw or {}).get("running")
    error_class = None
    if running:  # the process ended (or was stopped) in the middle of a test
        why = stop or say(lang, f"the test process ended during this test (exit status {outcome.returncode}): "
                                "does your code call exit()?",
                          f"测试进程在这个测试中途结束（退出状态 {outcome.returncode}）：你的代码是不是调用了 exit()？")
        name = running.removeprefix("tests/")
        tests.append({"name": name, "status": "error", "message": why, "output": "", "test_code": "",
                      "hidden": name.split("::")[0] in hidden, "error_class": outcome.outcome})
        error_class = outcome.outcome
    for t in tests:
        if t["status"] == "pass":
            continue
        bug = next((b for b in module.bugs if b.expect and b.expect in t["message"]), None)
        if bug is not None:
            t["message"] += "\n" + pick(bug.feedback, lang)
            t["bug"] = bug.id
    failed = [t for t in tests if t["status"] != "pass"]
    if stop and not running:
        status, message, error_class = "error", say(lang, "The tests were ", "测试") + stop, outcome.outcome
    elif raw is None or (outcome.outcome == "exited" and raw.get("exit_code") is None and not running):
        tail = (outcome.stderr or outcome.stdout).strip()[-1500:]
        status, error_class = "error", "harness"
        message = say(lang, f"the test run ended without results (results.json {problem or 'incomplete'}, exit status "
                            f"{outcome.returncode})", f"测试运行没有产生结果（results.json {problem or '不完整'}，"
                            f"退出状态 {outcome.returncode}）") + (f":\n{tail}" if tail else "")
    elif not tests:
        status, error_class = "error", "no-tests"
        message = say(lang, "no test ran", "没有运行任何测试")
    elif any(t["status"] == "error" for t in tests):
        status = "error"
        first = next(t for t in tests if t["status"] == "error")
        message = f"{first['name']}: {first['message']}"
    elif failed:
        status = "fail"
        message = say(lang, f"{len(failed)} of {len(tests)} tests fail; first: ", f"{len(tests)} 个测试中 {len(failed)} "
                      "个失败；第一个：") + f"{failed[0]['name']}: {failed[0]['message']}"
    else:
        status, message = "pass", say(lang, f"all {len(tests)} tests pass", f"全部 {len(tests)} 个测试通过")
    return {"version": 1, "module": module.number, "status": status, "message": message,
            "duration_s": round(outcome.duration_s, 3), "error_class": error_class,
            "sandbox": {"layers": dict(outcome.layers), "degraded": outcome.degraded},
            "tests": tests}
