"""One Lab module: its source folder, and the learner artifacts generated from it.

A module is a folder ``lab/modules/NN_slug/``::

    module.yaml          number, slug, titles, the learner's files, tasks with tiered hints,
                         reflection questions with model answers, the catalogue of bug variants
    intro.en.md  intro.zh.md   the introduction (figures in figures/, linked relatively)
    task.en.md   task.zh.md    the coding task
    solution/FILE.py     the reference solution of each learner file, with solution blocks
    tests/test_*.py      visible tests (copied into the learner's workspace)
    tests/hidden/test_*.py   hidden tests (only ever copied into the sandbox of a test run)

Two optional fields of ``module.yaml`` join the modules into one growing library:
``builds_on: [{module: 5, file: model.py}, ...]`` names the learner's files of earlier modules
that this module's tests import (a test run gets the learner's own version from that module's
workspace, or the earlier module's reference where there is none), and ``requires_layers:
[bubblewrap, seccomp]`` names the sandbox layers without which the module's tests must not run
(a module that executes model-written code).

A solution block (as nbgrader's ``BEGIN SOLUTION``) is the code the learner writes::

        # BEGIN SOLUTION merge
        ...reference code...
        # END SOLUTION

The learner's stub is the solution with every block replaced by the block's ``# STUB:`` lines
(uncommented) when it has any, else by ``raise NotImplementedError("merge")``. A bug variant is
the solution with one block's body replaced by the variant's ``code``.
"""

from __future__ import annotations

import os
import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..utils.errors import FoundryError
from .text import say

MODULES_DIR = Path(__file__).parent / "modules"
_BEGIN = re.compile(r"^(?P<indent>[ \t]*)# BEGIN SOLUTION(?: (?P<id>[\w.-]+))?\s*$")
_END = re.compile(r"^[ \t]*# END SOLUTION\s*$")
_STUB = re.compile(r"^[ \t]*# STUB: ?(?P<code>.*)$")


@dataclass
class Block:
    """One solution block of a file: ``lines[start:end]`` is its body (markers excluded)."""

    id: str
    indent: str
    start: int
    end: int
    stub: list[str]


@dataclass
class Bug:
    """A common wrong answer: ``code`` replaces block ``block`` of ``file``; a test run of it must fail
    with a message containing ``expect``; ``feedback`` (en, zh) is what the learner is told."""

    id: str
    file: str
    block: str
    code: str
    expect: str
    feedback: dict[str, str]


@dataclass
class Module:
    """A module's source, read from its folder."""

    path: Path
    number: int
    slug: str
    title: dict[str, str]
    files: list[str]
    tasks: list[dict]
    reflection: list[dict]
    bugs: list[Bug]
    meta: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def builds_on(self) -> list[tuple[int, str]]:
        """``(module number, file)`` of each earlier learner file this module's tests import."""
        return [(int(b["module"]), str(b["file"])) for b in self.meta.get("builds_on") or []]

    @property
    def requires_layers(self) -> list[str]:
        """The sandbox layers this module's tests refuse to run without."""
        return [str(x) for x in self.meta.get("requires_layers") or []]

    def text(self, kind: str, lang: str = "en") -> str:
        """``intro`` or ``task`` text in ``lang`` (en, zh)."""
        return (self.path / f"{kind}.{lang}.md").read_text(encoding="utf-8")

    def solution(self, file: str) -> str:
        """The reference solution of learner file ``file``, markers included."""
        return (self.path / "solution" / file).read_text(encoding="utf-8")

    def reference(self, file: str) -> str:
        """The reference solution of ``file`` as a learner would write it (markers removed)."""
        lines = self.solution(file).splitlines(keepends=True)
        return "".join(l for l in lines if not (_BEGIN.match(l) or _END.match(l) or _STUB.match(l)))

    def stub(self, file: str) -> str:
        """The learner's starting file: every solution block replaced by its stub."""
        lines = self.solution(file).splitlines(keepends=True)
        out, last = [], 0
        for b in blocks(lines):
            out += lines[last:b.start - 1]
            out += b.stub or [f'{b.indent}raise NotImplementedError("{b.id}")\n']
            last = b.end + 1
        return "".join(out + lines[last:])

    def variant(self, bug: Bug) -> str:
        """The reference solution of ``bug.file`` with ``bug``'s code in place of its block."""
        return self.replace(bug.file, {bug.block: bug.code}, what=f"bug {bug.id}")

    def replace(self, file: str, codes: dict[str, str], what: str = "a variant") -> str:
        """The reference solution of ``file`` with the body of each block ``id`` in ``codes``
        replaced by ``codes[id]`` (the other blocks keep the reference), markers removed."""
        lines = self.solution(file).splitlines(keepends=True)
        found = {b.id: b for b in blocks(lines)}
        for block in codes:
            if block not in found:
                raise FoundryError(f"module {self.name}: {what} names no block {block!r} in {file}")
        out, last = [], 0
        for b in sorted((found[k] for k in codes), key=lambda b: b.start):
            out += lines[last:b.start - 1]
            out.append(textwrap.indent(textwrap.dedent(codes[b.id]).rstrip("\n") + "\n", b.indent))
            last = b.end + 1
        text = "".join(out + lines[last:])
        return "".join(l for l in text.splitlines(keepends=True)
                       if not (_BEGIN.match(l) or _END.match(l) or _STUB.match(l)))

    def blocks(self, file: str) -> list[Block]:
        """The solution blocks of learner file ``file``."""
        return blocks(self.solution(file).splitlines(keepends=True))

    def tests(self, hidden: bool = False) -> list[Path]:
        """The visible (or hidden) test files."""
        folder = self.path / "tests" / ("hidden" if hidden else "")
        return sorted(folder.glob("test_*.py"))


def blocks(lines: list[str]) -> list[Block]:
    """The solution blocks of a file's lines (``start``/``end``: the BEGIN and END marker lines)."""
    out, open_ = [], None
    for i, line in enumerate(lines):
        if m := _BEGIN.match(line):
            if open_ is not None:
                raise FoundryError(f"line {i + 1}: a solution block opens inside another")
            open_ = Block(m["id"] or f"block{len(out) + 1}", m["indent"], i + 1, -1, [])
        elif _END.match(line):
            if open_ is None:
                raise FoundryError(f"line {i + 1}: END SOLUTION without BEGIN SOLUTION")
            open_.end = i
            out.append(open_)
            open_ = None
        elif open_ is not None and (m := _STUB.match(line)):
            open_.stub.append(f"{open_.indent}{m['code']}\n")
    if open_ is not None:
        raise FoundryError(f"solution block {open_.id} is never closed")
    # start/end as indices: body is lines[start:end]; markers at start - 1 and end
    return out


def load_module(path: Path) -> Module:
    """Read the module folder ``path``."""
    file = path / "module.yaml"
    if not file.is_file():
        raise FoundryError(f"{path} is not a lab module (no module.yaml)")
    try:
        meta = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
        bugs = [Bug(b["id"], b["file"], b["block"], b["code"], b["expect"], b["feedback"])
                for b in meta.get("bugs", [])]
        return Module(path, int(meta["number"]), meta["slug"], meta["title"], list(meta["files"]),
                      meta.get("tasks", []), meta.get("reflection", []), bugs, meta)
    except yaml.YAMLError as e:
        raise FoundryError(f"{file} is not valid YAML: {str(e).splitlines()[0]}") from None
    except KeyError as e:
        raise FoundryError(f"{file} lacks the field {e.args[0]!r}") from None
    except (TypeError, ValueError, AttributeError) as e:
        raise FoundryError(f"{file} is malformed: {e}") from None


def modules_dir() -> Path:
    """The folder of modules: ``$FOUNDRY_LAB_MODULES`` when set (a module author's own folder), else
    the modules that ship with the package."""
    env = os.environ.get("FOUNDRY_LAB_MODULES")
    return Path(env) if env else MODULES_DIR


def all_modules(folder: Path | None = None) -> list[Module]:
    """Every module of ``folder`` (default :func:`modules_dir`), by number."""
    folder = modules_dir() if folder is None else folder
    if not folder.is_dir():
        return []
    return sorted((load_module(p) for p in folder.iterdir() if (p / "module.yaml").is_file()),
                  key=lambda m: m.number)


def earlier_references(module: Module) -> dict[str, str]:
    """The references of the earlier learner files ``module`` builds on (file name -> code): what its
    authoring check runs on, and what a learner's run gets for an earlier module they have no file of.

    Raises:
        FoundryError: a ``builds_on`` entry names no learner file of an earlier module.
    """
    if not module.builds_on:
        return {}
    by_number = {m.number: m for m in all_modules(module.path.parent)}
    out = {}
    for number, file in module.builds_on:
        if number not in by_number or number >= module.number or file not in by_number[number].files:
            raise FoundryError(f"module {module.name} builds on {file} of module {number}, which is not a learner "
                               "file of an earlier module")
        out[file] = by_number[number].reference(file)
    return out


def find_module(number: int, lang: str = "en") -> Module:
    """Module ``number``, or a one-line error (in ``lang``) naming the modules there are."""
    modules = all_modules()
    for m in modules:
        if m.number == number:
            return m
    have = ", ".join(str(m.number) for m in modules)
    raise FoundryError(say(lang, f"there is no module {number} (modules: {have or 'none'}); `foundry lab list` shows them",
                           f"没有模块 {number}（现有模块：{have or '无'}）；`foundry lab list` 列出它们"))
