"""`foundry lab`: the course in which a learner rebuilds this library, module by module.

Each action is one function ``run_<action>`` and one entry in :data:`ACTIONS`. The learner's loop
is start → edit → test (hint, diff when stuck) → reflect, which unlocks the next module; the
engine is in ``llm_foundry/lab/`` and this file only reads arguments and prints.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import json
import sys
from pathlib import Path

from ..utils.errors import FoundryError


def _lang(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lang", choices=("en", "zh"), default=None,
                   help="the language of the texts and messages (default: from LANG; zh for a Chinese locale)")


def _number(p: argparse.ArgumentParser) -> None:
    p.add_argument("number", metavar="N", type=int, help="the module's number (`foundry lab list` shows them)")


def _dir(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--dir", metavar="WORKSPACE", help=what)


def _add_list(actions) -> None:
    p = actions.add_parser("list", help="the modules: locked, unlocked, passed", description="List the modules with "
                           "their state (locked, unlocked, started, passed, done, skipped) and your progress.")
    _lang(p)
    p.set_defaults(func=run_list)


def _add_start(actions) -> None:
    p = actions.add_parser("start", help="write a module's stub files and show its introduction",
                           description="Write the module's workspace (your files as stubs, the visible tests, "
                                       "INTRO.md and TASK.md), remember it, and show the introduction. Files you "
                                       "already wrote are kept.")
    _number(p)
    _dir(p, "the workspace folder (default: the one remembered, else ~/foundry-lab/NN_slug)")
    _lang(p)
    p.set_defaults(func=run_start)


def _add_test(actions) -> None:
    p = actions.add_parser("test", help="run a module's tests on your files, in the sandbox",
                           description="Run the module's visible and hidden tests on your files in the sandbox; "
                                       "every failure names the call, the expected and the actual value and your "
                                       "line. Exits 0 when every test passes.")
    _number(p)
    _dir(p, "the workspace to test (default: the one `start` wrote)")
    p.add_argument("--json", action="store_true", help="print the results.json object (one a line with --watch)")
    p.add_argument("--watch", action="store_true", help="run again every time you save one of your files")
    p.add_argument("--max-runs", type=int, default=None, metavar="N", help="with --watch: stop after N runs (scripts, tests)")
    _lang(p)
    p.set_defaults(func=run_test)


def _add_hint(actions) -> None:
    p = actions.add_parser("hint", help="the next hint level of a task (logged)",
                           description="Show the next hint of a task: the first is a nudge, the last nearly the "
                                       "answer. Hints opened are part of your progress.")
    _number(p)
    p.add_argument("--task", metavar="ID", help="the task (default: the first one with hints left)")
    _lang(p)
    p.set_defaults(func=run_hint)


def _add_diff(actions) -> None:
    p = actions.add_parser("diff", help="your files against the reference, line by line",
                           description="Show the line diff between your files and the reference solution, and the "
                                       "library files the module rebuilds. Before the module passes it asks first.")
    _number(p)
    _dir(p, "the workspace (default: the one `start` wrote)")
    p.add_argument("--yes", action="store_true", help="do not ask, even before the module passes (scripts)")
    _lang(p)
    p.set_defaults(func=run_diff)


def _add_reflect(actions) -> None:
    p = actions.add_parser("reflect", help="answer the reflection questions; then see the model answers",
                           description="Answer the module's reflection questions (typed, or from a file); then the "
                                       "model answers are shown. Passed and reflected unlocks the next module.")
    _number(p)
    p.add_argument("--answers", metavar="FILE.json", help='the answers as a JSON list of strings, one per question')
    _lang(p)
    p.set_defaults(func=run_reflect)


def _add_status(actions) -> None:
    p = actions.add_parser("status", help="your progress: attempts, hints, reflections, time",
                           description="Your progress per module: state, attempts and the last result, hints "
                                       "opened, reference viewed, reflection, time spent, workspace.")
    _lang(p)
    p.set_defaults(func=run_status)


def _add_reset(actions) -> None:
    p = actions.add_parser("reset", help="start a module over (your files are kept in a backup)",
                           description="Start a module over: its pass, reflection and hints no longer count (the "
                                       "history is kept); your files move to WORKSPACE/.lab-backup/ and fresh stubs "
                                       "take their place. Modules it unlocked stay unlocked.")
    _number(p)
    _lang(p)
    p.set_defaults(func=run_reset)


def _add_skip(actions) -> None:
    p = actions.add_parser("skip", help="skip a module (recorded); the next one unlocks",
                           description="Skip a module: recorded in your progress, and the next module unlocks.")
    _number(p)
    _lang(p)
    p.set_defaults(func=run_skip)


def _add_note(actions) -> None:
    p = actions.add_parser("note", help="keep a note on a module", description="Keep a note on a module in your "
                           "progress (`foundry lab status` counts them).")
    _number(p)
    p.add_argument("text", metavar="TEXT", help="the note")
    _lang(p)
    p.set_defaults(func=run_note)


def _add_check(actions) -> None:
    p = actions.add_parser("check", help="the authoring check of every module (or of module N)",
                           description="The authoring check: the reference passes every one of its runs (3), the stub fails on "
                                       "assertions, every bug variant fails with its message, trivially wrong "
                                       "answers (return 0, pass, the input returned) pass no test. Exits 1 on a "
                                       "problem.")
    p.add_argument("number", metavar="N", type=int, nargs="?", help="only this module")
    p.add_argument("--jobs", type=int, default=None, metavar="J",
                   help="test runs at once after the reference runs (default: the CPUs, at most 4)")
    p.add_argument("--runs", type=int, default=3, metavar="R",
                   help="whole timed runs of the reference, each must pass (default: 3, to catch flaky tests)")
    _lang(p)
    p.set_defaults(func=run_check)


def _add_web(actions) -> None:
    p = actions.add_parser("web", help="the whole course in the browser (docs/en/lab-web.md)",
                           description="Serve the Lab in the browser: dashboard, module pages with an editor, tests "
                                       "in the sandbox streamed live, hints, diff, reflection. One learner on a "
                                       "loopback bind; classroom mode (accounts, mentors) with --classroom or any "
                                       "other bind.")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8765, help="port (default: 8765; 0 picks a free one)")
    p.add_argument("--classroom", action="store_true", help="accounts and a lab home per learner, even on loopback")
    p.add_argument("--workers", type=int, default=2, metavar="N", help="test runs at once; more wait in a queue "
                   "(default: 2)")
    p.add_argument("--run-time-limit", type=float, default=None, metavar="S",
                   help="wall-clock limit of each test run in seconds (default: each module's own, 60 s)")
    p.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                   help="a Host name to answer besides the loopback names and the bound address (repeatable)")
    p.add_argument("--add-user", metavar="NAME", help="create (or update) an account and exit; the password is "
                   "asked for, or read from the first line of stdin")
    p.add_argument("--role", choices=("learner", "mentor"), default="learner", help="with --add-user (default: learner)")
    p.set_defaults(func=run_web)


ACTIONS = (_add_list, _add_start, _add_test, _add_hint, _add_diff, _add_reflect, _add_status, _add_reset, _add_skip,
           _add_note, _add_check, _add_web)


def add_parser(sub) -> None:
    p = sub.add_parser("lab", help="the Lab: rebuild this library module by module (start, test, hint, reflect)",
                       description="The Lab: a course in which you rebuild this library piece by piece. Start a "
                                   "module, edit your files, test them in a sandbox, reflect; that unlocks the next. "
                                   "Progress is kept in $FOUNDRY_LAB_HOME (default ~/.foundry/lab).")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    for build in ACTIONS:
        build(actions)


# ----------------------------------------------------------------------------- helpers
def _console():
    from rich.console import Console

    # a file or a pipe: wide enough that tables keep their columns (a terminal knows its own width)
    return Console(highlight=False, width=None if sys.stdout.isatty() else 150)


def _ctx(args: argparse.Namespace, need_unlocked: bool = True):
    """``(lang, module, progress)`` for an action on module ``args.number``."""
    from ..lab.module import find_module
    from ..lab.progress import Progress
    from ..lab.text import default_lang, say

    lang = args.lang or default_lang()
    module = find_module(args.number, lang)
    progress = Progress.open()
    if need_unlocked and not progress.state(module.number).unlocked:
        progress.close()
        n, prev = module.number, module.number - 1
        raise FoundryError(say(lang, f"module {n} is locked: pass module {prev} (`foundry lab test {prev}`) and answer "
                                     f"its reflection (`foundry lab reflect {prev}`), or `foundry lab skip {prev}`",
                               f"模块 {n} 尚未解锁：先通过模块 {prev}（`foundry lab test {prev}`）并回答它的反思问题"
                               f"（`foundry lab reflect {prev}`），或 `foundry lab skip {prev}`"))
    return lang, module, progress


def _workspace(args: argparse.Namespace, progress, module, lang: str) -> Path:
    from ..lab.text import say

    if args.dir:
        return Path(args.dir).expanduser().resolve()
    remembered = progress.workspace(module.number)
    if remembered is None:
        raise FoundryError(say(lang, f"module {module.number} has no workspace yet: run `foundry lab start "
                                     f"{module.number}` first (or give --dir)",
                               f"模块 {module.number} 还没有工作区：先运行 `foundry lab start {module.number}`"
                               "（或用 --dir 指定）"))
    return remembered


def _state_word(state, lang: str) -> str:
    from ..lab.text import say

    if not state.unlocked:
        return say(lang, "[dim]locked[/]", "[dim]未解锁[/]")
    if state.done:
        return say(lang, "[green]done[/]", "[green]完成[/]")
    if state.skipped:
        return say(lang, "[yellow]skipped[/]", "[yellow]已跳过[/]")
    if state.passed:
        return say(lang, "[green]passed[/] (reflect next)", "[green]已通过[/]（下一步：反思）")
    if state.workspace:
        return say(lang, "started", "进行中")
    return say(lang, "unlocked", "已解锁")


# ----------------------------------------------------------------------------- actions
def run_list(args: argparse.Namespace) -> int:
    from rich.table import Table

    from ..lab.module import all_modules
    from ..lab.progress import Progress
    from ..lab.text import default_lang, pick, say

    lang = args.lang or default_lang()
    modules = all_modules()
    table = Table(title=say(lang, "The Lab", "实验室"))
    for col in ("#", say(lang, "module", "模块"), say(lang, "minutes", "分钟"), say(lang, "state", "状态"),
                say(lang, "attempts", "尝试")):
        table.add_column(col)
    with Progress.open() as progress:
        states = [progress.state(m.number) for m in modules]
    for m, s in zip(modules, states):
        table.add_row(str(m.number), pick(m.title, lang), str(m.meta.get("minutes", "")), _state_word(s, lang),
                      str(s.attempts))
    out = _console()
    out.print(table)
    done = sum(s.done or s.skipped for s in states)
    out.print(say(lang, f"{done} of {len(modules)} modules done. Begin with `foundry lab start 1`.",
                  f"{len(modules)} 个模块中已完成 {done} 个。从 `foundry lab start 1` 开始。"))
    return 0


def run_start(args: argparse.Namespace) -> int:
    from rich.markdown import Markdown
    from rich.panel import Panel

    from ..lab.text import pick, say
    from ..lab.workspace import built_on_files, copy_built_on, default_workspace, write_workspace

    lang, module, progress = _ctx(args)
    with progress:
        folder = Path(args.dir).expanduser().resolve() if args.dir else (
            progress.workspace(module.number) or default_workspace(module))
        written, kept = write_workspace(module, folder, lang)
        if module.builds_on:  # the earlier modules' files this one imports, for `pytest` by hand
            copy_built_on(folder, built_on_files(module, progress.workspace, lang)[0])
        revisit = progress.start(module.number, folder)
    out = _console()
    out.print(Markdown(module.text("intro", lang)))
    files = "\n".join(f"  {folder / f}" for f in module.files)
    text = say(lang, f"Module {module.number}: {pick(module.title, lang)}\n\nYour workspace: {folder}\n"
                     f"Edit:\n{files}\nThe task: {folder / 'TASK.md'}\n\nThen run:  foundry lab test {module.number}\n"
                     f"Stuck?     foundry lab hint {module.number}",
               f"模块 {module.number}：{pick(module.title, lang)}\n\n你的工作区：{folder}\n要编辑的文件：\n{files}\n"
               f"任务说明：{folder / 'TASK.md'}\n\n写完后运行：foundry lab test {module.number}\n"
               f"卡住了？    foundry lab hint {module.number}")
    if kept:
        text += say(lang, f"\n\nKept your files: {', '.join(kept)}", f"\n\n保留了你已有的文件：{', '.join(kept)}")
    if revisit:
        text += say(lang, "\n(revisiting: recorded in your progress)", "\n（再次访问：已记入进度）")
    out.print(Panel(text, expand=False))
    return 0


def _render(out, module, results: dict, lang: str) -> None:
    from ..lab.text import pick, say

    tests = results["tests"]
    passed = sum(t["status"] == "pass" for t in tests)
    color = {"pass": "green", "fail": "red", "error": "red"}[results["status"]]
    out.print(f"[bold]{say(lang, 'Module', '模块')} {module.number} · {pick(module.title, lang)}[/] — "
              f"[{color}]{results['status']}[/] ({passed}/{len(tests)} {say(lang, 'tests pass', '个测试通过')}, "
              f"{results['duration_s']:.1f} s)")
    seen = set()
    for t in tests:
        mark = {"pass": "[green]✓[/]", "fail": "[red]✗[/]", "error": "[red]![/]"}[t["status"]]
        hidden = say(lang, " [dim](hidden)[/]", " [dim]（隐藏测试）[/]") if t["hidden"] else ""
        out.print(f" {mark} {t['name']}{hidden}", markup=True)
        if t["status"] != "pass":
            if t["message"] in seen:  # the same cause as a failure above ("`merge` is not written yet"): one dim line
                out.print(f"     {t['message'].splitlines()[0] if t['message'] else ''}"
                          + say(lang, " (as above)", "（同上）"), style="dim", markup=False)
                continue
            seen.add(t["message"])
            for line in t["message"].splitlines():
                out.print(f"     {line}", markup=False)
            if t["output"].strip():
                out.print(say(lang, "     it printed:", "     它的输出："), style="dim")
                for line in t["output"].rstrip().splitlines()[:20]:
                    out.print(f"       {line}", style="dim", markup=False)
    if results["status"] != "pass" and not tests:
        for line in results["message"].splitlines():
            out.print(f"   {line}", markup=False)
    for name, source in results.get("built_on", {}).items():
        out.print(say(lang, f"   {name}: {source}", f"   {name}：{source}"), style="dim", markup=False)
    sandbox = results["sandbox"]
    if sandbox["degraded"]:
        off = [k for k, v in sandbox["layers"].items() if v != "on"]
        out.print(say(lang, f"sandbox: degraded (off: {', '.join(off)})", f"沙箱：降级运行（未启用：{', '.join(off)}）"),
                  style="dim")


def run_test(args: argparse.Namespace) -> int:
    from ..lab.results import run_tests
    from ..lab.text import say
    from ..lab.workspace import built_on_files, copy_built_on, read_learner_files, signature, wait_for_change

    lang, module, progress = _ctx(args)
    out = _console()
    runs, code = 0, 1
    with progress:
        folder = _workspace(args, progress, module, lang)
        while True:
            seen = signature(folder, module.files)  # before reading: a save during the run triggers the next
            try:
                files = read_learner_files(module, folder, lang)
                earlier, sources = built_on_files(module, progress.workspace, lang)
            except FoundryError as e:
                if not args.watch:
                    raise
                out.print(f"error: {e}", markup=False)
            else:
                if earlier:
                    copy_built_on(folder, earlier)
                    files = {**earlier, **files}
                busy = say(lang, f"running module {module.number}'s tests in the sandbox…",
                           f"正在沙箱里运行模块 {module.number} 的测试……")
                with contextlib.nullcontext() if args.json else out.status(busy):  # --json: stdout is only JSON
                    results = run_tests(module, files, lang)
                if sources:
                    results["built_on"] = sources
                unlocked = progress.record_attempt(module.number, results)
                code = 0 if results["status"] == "pass" else 1
                if args.json:
                    print(json.dumps(results, ensure_ascii=False), flush=True)
                else:
                    _render(out, module, results, lang)
                    _after_test(out, module, progress, results, unlocked, lang)
            runs += 1
            if not args.watch or (args.max_runs is not None and runs >= args.max_runs):
                return code
            if not args.json:
                out.print(say(lang, "watching your files; save to run again (Ctrl-C to stop)",
                              "正在监视你的文件；保存后自动重新运行（Ctrl-C 停止）"), style="dim")
            try:
                wait_for_change(folder, module.files, since=seen)
            except KeyboardInterrupt:
                return code


def _after_test(out, module, progress, results: dict, unlocked: bool, lang: str) -> None:
    from ..lab.text import say

    n = module.number
    if results["status"] != "pass":
        if results.get("error_class") != "sandbox-refused":  # (a hint cannot turn a sandbox layer on)
            out.print(say(lang, f"Stuck? `foundry lab hint {n}` shows the next hint.",
                          f"卡住了？`foundry lab hint {n}` 显示下一条提示。"))
    elif unlocked:
        out.print(say(lang, f"[green]Passed.[/] Module {n + 1} is unlocked: `foundry lab start {n + 1}`.",
                      f"[green]通过！[/]模块 {n + 1} 已解锁：`foundry lab start {n + 1}`。"))
    elif not progress.state(n).reflected:
        out.print(say(lang, f"[green]Passed.[/] Next: answer the reflection questions, `foundry lab reflect {n}`.",
                      f"[green]通过！[/]下一步：回答反思问题，`foundry lab reflect {n}`。"))
    else:
        out.print(say(lang, "[green]Passed.[/]", "[green]通过！[/]"))


def run_hint(args: argparse.Namespace) -> int:
    from ..lab.text import pick, say

    lang, module, progress = _ctx(args)
    tasks = {str(t["id"]): t for t in module.tasks}
    if args.task is not None and args.task not in tasks:
        raise FoundryError(say(lang, f"module {module.number} has no task {args.task!r} (tasks: {', '.join(tasks)})",
                               f"模块 {module.number} 没有任务 {args.task!r}（任务：{', '.join(tasks)}）"))
    out = _console()
    with progress:
        opened = progress.state(module.number).hints
        order = [args.task] if args.task else [t for t in tasks if opened.get(t, 0) < len(tasks[t].get("hints", []))]
        if not order:
            out.print(say(lang, f"Every hint of module {module.number} is open. `foundry lab diff {module.number}` "
                                "compares your files with the reference.",
                          f"模块 {module.number} 的提示已全部打开。`foundry lab diff {module.number}` 可以把你的文件"
                          "和参考答案对比。"))
            return 0
        task = tasks[order[0]]
        hints = task.get("hints", [])
        level = progress.open_hint(module.number, order[0], len(hints))
    if level is None:
        out.print(say(lang, f"Every hint of task {order[0]} is open ({len(hints)}).",
                      f"任务 {order[0]} 的提示已全部打开（共 {len(hints)} 条）。"))
        return 0
    out.print(f"[bold]{say(lang, 'Hint', '提示')} {level}/{len(hints)} — {pick(task.get('title', order[0]), lang)}[/]")
    out.print(pick(hints[level - 1], lang), markup=False)
    return 0


def run_diff(args: argparse.Namespace) -> int:
    from rich.prompt import Confirm
    from rich.syntax import Syntax

    from ..lab.text import say
    from ..lab.workspace import read_learner_files

    lang, module, progress = _ctx(args)
    out = _console()
    with progress:
        folder = _workspace(args, progress, module, lang)
        files = read_learner_files(module, folder, lang)
        if not progress.state(module.number).passed and not args.yes:
            question = say(lang, f"Module {module.number} has not passed yet; seeing the reference now takes away the "
                                 "finding-out. Show it?",
                           f"模块 {module.number} 还没有通过；现在看参考答案会少了自己找到答案的过程。仍要显示吗？")
            if not sys.stdin.isatty():
                raise FoundryError(say(lang, f"module {module.number} has not passed yet: add --yes to see the "
                                             "reference anyway",
                                       f"模块 {module.number} 还没有通过：加上 --yes 仍然查看参考答案"))
            if not Confirm.ask(question, default=False):
                return 0
        progress.view_reference(module.number)
    for name in module.files:
        mine = files[name].decode("utf-8", "replace").splitlines(keepends=True)
        ref = module.reference(name).splitlines(keepends=True)
        diff = "".join(difflib.unified_diff(mine, ref, say(lang, f"your {name}", f"你的 {name}"),
                                            say(lang, f"reference {name}", f"参考 {name}")))
        if diff:
            out.print(Syntax(diff, "diff", theme="ansi_dark", background_color="default"))
        else:
            out.print(say(lang, f"{name}: the same as the reference", f"{name}：与参考答案相同"))
    library = module.meta.get("library") or []
    if library:
        out.print(say(lang, "The code you use every day that this module rebuilds:", "本模块重建的、你每天用到的代码："))
        for path in library:
            out.print(f"  {path}", markup=False)
    return 0


def _read_answers(args: argparse.Namespace, questions: list[dict], lang: str, out) -> list[str]:
    from ..lab.text import pick, say
    from ..utils.io import read_json

    if args.answers:
        data = read_json(args.answers, "answers file")
        data = data.get("answers") if isinstance(data, dict) else data
        if not (isinstance(data, list) and all(isinstance(a, str) for a in data)):
            raise FoundryError(say(lang, f"{args.answers}: expected a JSON list of strings, one per question",
                                   f"{args.answers}：应为 JSON 字符串列表，每个问题一个"))
        if len(data) != len(questions) or any(not a.strip() for a in data):
            raise FoundryError(say(lang, f"{args.answers}: {len(questions)} non-empty answers needed, found "
                                         f"{sum(bool(a.strip()) for a in data)}",
                                   f"{args.answers}：需要 {len(questions)} 个非空回答，找到 "
                                   f"{sum(bool(a.strip()) for a in data)} 个"))
        return [a.strip() for a in data]
    answers = []
    for i, q in enumerate(questions, 1):
        out.print(f"[bold]{i}/{len(questions)}[/] {pick(q['question'], lang)}")
        while True:
            try:
                line = input("> ").strip()
            except EOFError:
                raise FoundryError(say(lang, f"no answer to question {i} (or give --answers FILE.json)",
                                       f"问题 {i} 没有回答（也可以用 --answers FILE.json）")) from None
            if line:
                answers.append(line)
                break
            out.print(say(lang, "an answer, please (a sentence is enough)", "请写下回答（一句话就够）"), style="dim")
    return answers


def run_reflect(args: argparse.Namespace) -> int:
    from rich.panel import Panel

    from ..lab.text import pick, say

    lang, module, progress = _ctx(args)
    out = _console()
    with progress:
        answers = _read_answers(args, module.reflection, lang, out)
        unlocked = progress.submit_reflection(module.number, answers)
        passed = progress.state(module.number).passed
    for i, (q, mine) in enumerate(zip(module.reflection, answers), 1):
        out.print(Panel(f"{say(lang, 'You', '你的回答')}: {mine}\n\n{say(lang, 'Model answer', '参考回答')}: "
                        f"{pick(q['answer'], lang)}", title=f"{i}. {pick(q['question'], lang)}", expand=False))
    n = module.number
    if unlocked:
        out.print(say(lang, f"[green]Module {n + 1} is unlocked:[/] `foundry lab start {n + 1}`.",
                      f"[green]模块 {n + 1} 已解锁：[/]`foundry lab start {n + 1}`。"))
    elif not passed:
        out.print(say(lang, f"Reflection saved. Pass the tests (`foundry lab test {n}`) to unlock module {n + 1}.",
                      f"反思已保存。通过测试（`foundry lab test {n}`）即可解锁模块 {n + 1}。"))
    else:
        out.print(say(lang, "Reflection saved.", "反思已保存。"))
    return 0


def run_status(args: argparse.Namespace) -> int:
    from rich.table import Table

    from ..lab.module import all_modules
    from ..lab.progress import Progress
    from ..lab.text import default_lang, say

    lang = args.lang or default_lang()
    table = Table(title=say(lang, "Your progress", "你的进度"))
    for col in ("#", say(lang, "state", "状态"), say(lang, "attempts", "尝试"), say(lang, "last", "最近"),
                say(lang, "hints", "提示"), say(lang, "reference", "参考答案"), say(lang, "reflection", "反思"),
                say(lang, "notes", "笔记"), say(lang, "time", "用时")):
        table.add_column(col)
    workspaces = []
    with Progress.open() as progress:
        for m in all_modules():
            s = progress.state(m.number)
            notes = len(progress.events(m.number, "note"))
            ref = "" if not s.reference_viewed else say(lang, "before pass", "通过前") if s.reference_before_pass \
                else say(lang, "after pass", "通过后")
            table.add_row(str(m.number), _state_word(s, lang), str(s.attempts), s.last_status or "",
                          str(sum(s.hints.values())), ref, "✓" if s.reflected else "", str(notes) if notes else "",
                          (f"{s.time_s / 60:.0f} min" if s.time_s >= 60 else "< 1 min") if s.time_s else "")
            if s.workspace:
                workspaces.append(f"  {m.number}: {s.workspace}")
        home = progress.path
    out = _console()
    out.print(table)
    if workspaces:  # below the table, whole: a path to copy
        out.print(say(lang, "workspaces:", "工作区："))
        out.print("\n".join(workspaces), markup=False, soft_wrap=True)
    out.print(say(lang, f"progress: {home}", f"进度数据库：{home}"), style="dim")
    return 0


def run_reset(args: argparse.Namespace) -> int:
    from ..lab.text import say
    from ..lab.workspace import restore_stubs

    lang, module, progress = _ctx(args)
    with progress:
        folder = progress.workspace(module.number)
        backup = restore_stubs(module, folder) if folder is not None and folder.is_dir() else None
        progress.reset(module.number)
    out = _console()
    out.print(say(lang, f"Module {module.number} starts over.", f"模块 {module.number} 已重新开始。"))
    if backup is not None:
        out.print(say(lang, f"Your files are kept in {backup}; fresh stubs are in {folder}.",
                      f"你的文件保存在 {backup}；{folder} 里是新的初始文件。"), markup=False)
    return 0


def run_skip(args: argparse.Namespace) -> int:
    from ..lab.text import say

    lang, module, progress = _ctx(args)
    with progress:
        progress.skip(module.number)
    n = module.number
    _console().print(say(lang, f"Skipped module {n} (recorded). Module {n + 1} is unlocked: `foundry lab start {n + 1}`.",
                         f"已跳过模块 {n}（已记录）。模块 {n + 1} 已解锁：`foundry lab start {n + 1}`。"))
    return 0


def run_note(args: argparse.Namespace) -> int:
    from ..lab.text import say

    lang, module, progress = _ctx(args, need_unlocked=False)
    if not args.text.strip():
        raise FoundryError(say(lang, "the note is empty", "笔记是空的"))
    with progress:
        progress.add_note(module.number, args.text.strip())
    _console().print(say(lang, f"Note kept on module {module.number}.", f"笔记已记到模块 {module.number}。"))
    return 0


def run_check(args: argparse.Namespace) -> int:
    from ..lab.check import check_module
    from ..lab.module import all_modules, find_module
    from ..lab.text import default_lang, say

    lang = args.lang or default_lang()
    if args.jobs is not None and args.jobs < 1:
        raise FoundryError(say(lang, "--jobs must be at least 1", "--jobs 至少为 1"))
    if args.runs < 1:
        raise FoundryError(say(lang, "--runs must be at least 1", "--runs 至少为 1"))
    modules = [find_module(args.number, lang)] if args.number is not None else all_modules()
    if not modules:
        raise FoundryError(say(lang, "there are no modules to check", "没有可检查的模块"))
    out = _console()
    bad = 0
    for m in modules:
        out.print(f"[bold]{m.name}[/]")
        findings = check_module(m, say=lambda msg: out.print(f"  {msg}", markup=False), jobs=args.jobs,
                                reference_runs=args.runs)
        bad += sum(not f.ok for f in findings)
    out.print(say(lang, f"{len(modules)} modules checked, {bad} problems", f"检查了 {len(modules)} 个模块，{bad} 个问题"))
    return 1 if bad else 0


def run_web(args: argparse.Namespace) -> int:
    from ..lab.progress import lab_home
    from ..lab.web.accounts import add_user
    from ..lab.web.app import Settings
    from ..lab.web.server import is_loopback, read_password, serve
    from ..lab.web.store import Store

    if args.add_user:
        add_user(Store(lab_home() / "web" / "web.db"), args.add_user, args.role, read_password(args.add_user))
        print(f"account {args.add_user} ({args.role}) saved")
        return 0
    if args.workers < 1:
        raise FoundryError("--workers must be at least 1")
    if args.run_time_limit is not None and args.run_time_limit <= 0:
        raise FoundryError("--run-time-limit must be positive")
    loopback = is_loopback(args.host)
    settings = Settings(classroom=args.classroom or not loopback, root=lab_home(), workers=args.workers,
                        wall_s=args.run_time_limit, allowed_hosts=tuple(args.allowed_host) or (() if loopback else ("*",)))
    try:
        serve(args.host, args.port, settings)
    except KeyboardInterrupt:
        pass
    return 0
