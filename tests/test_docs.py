"""Checks on the user documentation in docs/en and docs/zh.

What a reader relies on: both languages have the same pages; every `foundry ...`
command shown in a code block runs past the argument parser (real subcommand, real
options, valid choices, known config keys); every option of every command is
documented; relative links and their #anchors land; configuration.md documents
exactly the fields of ModelConfig and TrainConfig with their real defaults, and
the presets with their real values.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import re
import shlex
from pathlib import Path

import pytest
import yaml

from llm_foundry.cli.main import build_parser
from llm_foundry.config import ModelConfig, TrainConfig, list_presets, load_config

DOCS = Path(__file__).resolve().parents[1] / "docs"
LANGS = ("en", "zh")
REQUIRED = {"README.md", "quickstart.md", "architecture.md", "training.md", "inference.md",
            "configuration.md", "data-preparation.md", "api-reference.md"}
SECTIONS = {"model": ModelConfig, "train": TrainConfig}


def doc_files(lang: str | None = None) -> list[Path]:
    langs = [lang] if lang else LANGS
    return sorted(p for lg in langs for p in (DOCS / lg).glob("*.md"))


# ---------------------------------------------------------------- markdown parsing
FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})(.*)$")


def split_fences(text: str) -> tuple[list[tuple[str, list[str]]], list[str]]:
    """``([(info, code lines), ...], prose lines)``; prose lines of code blocks are blanked."""
    blocks, prose = [], []
    fence, info, lines = None, "", []
    for line in text.splitlines():
        m = FENCE.match(line)
        if fence is None:
            if m:
                fence, info, lines = m.group(2), m.group(3).strip(), []
                prose.append("")
            else:
                prose.append(line)
        else:
            if m and m.group(2).startswith(fence[0]) and len(m.group(2)) >= len(fence) and not m.group(3).strip():
                blocks.append((info, lines))
                fence = None
            else:
                lines.append(line)
            prose.append("")
    assert fence is None, "unclosed code fence"
    return blocks, prose


def command_lines(code: list[str]) -> list[str]:
    """``foundry ...`` command lines of a code block (continuations joined, prompts removed)."""
    out, buf = [], ""
    for raw in code:
        line = raw.rstrip()
        if buf:
            buf += " " + line.strip()
        else:
            buf = line.strip()
        if buf.endswith("\\"):
            buf = buf[:-1].rstrip()
            continue
        cmd = buf.removeprefix("$ ").strip()
        buf = ""
        # leading environment assignments, e.g. FOUNDRY_DEBUG=1 foundry train ...
        cmd = re.sub(r"^(?:[A-Z_][A-Z0-9_]*=\S*\s+)+", "", cmd)
        if cmd == "foundry" or cmd.startswith("foundry "):
            out.append(cmd)
    return out


def foundry_commands(path: Path) -> list[str]:
    blocks, _ = split_fences(path.read_text(encoding="utf-8"))
    return [c for _, code in blocks for c in command_lines(code)]


# ------------------------------------------------------------- command checking
SHELL_STOP = {"|", "||", "&&", ";", ">", ">>", "<", "&", "2>&1", "2>", "1>"}
PLACEHOLDER = re.compile(r"^(<[^<>]+>|[A-Z][A-Z0-9_]*(\.\.\.)?|\.\.\.|\"\.\.\.\")$")


def _tokens(cmd: str) -> list[str]:
    # $'...' is bash ANSI-C quoting; shlex does not know it, the value does not matter here.
    cmd = re.sub(r"\$'((?:[^'\\]|\\.)*)'", lambda m: shlex.quote(m.group(1)), cmd)
    lex = shlex.shlex(cmd, posix=True, punctuation_chars="|&;<>")
    lex.whitespace_split = True
    lex.commenters = "#"
    tokens = []
    for tok in lex:
        if tok in SHELL_STOP or tok.startswith(("|", ">", ";", "&")):
            break
        tokens.append(tok)
    return tokens


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("foundry has no subcommands")


def _actions_of(sub: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The actions of a command that has them (``config show``, ``memory add``), else {}."""
    return next((dict(a.choices) for a in sub._actions if isinstance(a, argparse._SubParsersAction)), {})


def _option_actions(sub: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {s: a for a in sub._actions for s in a.option_strings}


def _is_synopsis(tokens: list[str]) -> bool:
    return any(t.startswith("[") or t.endswith("]") or ("|" in t and not t.startswith("-")) or t.endswith("...")
               for t in tokens)


def _config_key_known(key: str) -> bool:
    key = key.strip().replace("-", "_")
    names = {s: {f.name for f in dataclasses.fields(c)} for s, c in SECTIONS.items()}
    if "." in key:
        section, name = key.split(".", 1)
        return section in names and name in names[section]
    return sum(key in n for n in names.values()) == 1


def check_command(cmd: str, parser: argparse.ArgumentParser | None = None) -> list[str]:
    """Problems with one documented ``foundry ...`` line (empty list = fine)."""
    parser = parser or build_parser()
    subs = _subparsers(parser)
    tokens = _tokens(cmd)
    assert tokens and tokens[0] == "foundry", cmd
    args = tokens[1:]
    if not args or args[0] in ("-h", "--help", "--version"):
        return []
    if args[0] not in subs:
        return [f"unknown subcommand {args[0]!r}"]
    sub = subs[args[0]]
    # A command with actions (`foundry config show`, `foundry memory add`): the action's options count.
    sub = _actions_of(sub).get(args[1], sub) if len(args) > 1 else sub
    actions = _option_actions(sub)
    problems = []
    # 1. every option named must exist in that subcommand (synopsis lines too)
    for tok in args[1:]:
        name = tok.strip("[]").split("=", 1)[0]
        if name.startswith("-") and len(name) > 1 and not re.fullmatch(r"-\d.*", name):
            if name not in actions:
                problems.append(f"'{args[0]}' has no option {name}")
    if problems or _is_synopsis(args):
        return problems
    # 2. a concrete command line must get past the parser; placeholders get a value the
    #    option accepts (its first choice, 1 for numbers, 'x' otherwise)
    concrete, prev = [], None
    for tok in args:
        if PLACEHOLDER.match(tok) and tok != args[0]:
            action = actions.get(prev) if prev else None
            if action is not None and action.choices:
                tok = str(list(action.choices)[0])
            elif action is not None and action.type in (int, float):
                tok = "1"
            else:
                tok = "x"
        concrete.append(tok)
        prev = tok if tok.startswith("-") else None
    try:
        ns = parser.parse_args(concrete)
    except SystemExit as e:
        if e.code not in (0, None):
            return [f"argparse rejects: {' '.join(concrete)}"]
        return []
    # 3. config overrides of `foundry train` must name real fields
    for item in getattr(ns, "overrides", None) or []:
        if args[0] == "train":
            if "=" not in item:
                problems.append(f"override {item!r} is not key=value")
            elif not _config_key_known(item.split("=", 1)[0]):
                problems.append(f"override {item!r} names no config field")
    return problems


def test_docs_exist_in_both_languages():
    for lang in LANGS:
        names = {p.name for p in doc_files(lang)}
        assert REQUIRED <= names, f"docs/{lang} lacks {sorted(REQUIRED - names)}"
    en = {p.name for p in doc_files("en")}
    zh = {p.name for p in doc_files("zh")}
    assert en == zh, f"only in en: {sorted(en - zh)}; only in zh: {sorted(zh - en)}"


def test_chinese_docs_are_chinese():
    for path in doc_files("zh"):
        _, prose = split_fences(path.read_text(encoding="utf-8"))
        text = "\n".join(prose)
        cjk = len(re.findall(r"[\u4e00-\u9fff]", text))
        assert cjk > 0.1 * len(re.findall(r"[A-Za-z]", text)), f"{path.name}: little Chinese prose"


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_documented_commands_parse(path):
    parser = build_parser()
    problems = [f"{cmd}\n    -> {p}" for cmd in foundry_commands(path) for p in check_command(cmd, parser)]
    assert not problems, f"{path}:\n" + "\n".join(problems)


def test_each_language_shows_commands():
    for lang in LANGS:
        cmds = [c for p in doc_files(lang) for c in foundry_commands(p)]
        used = {_tokens(c)[1] for c in cmds if len(_tokens(c)) > 1}
        assert {"prepare", "train", "generate", "eval", "demo"} <= used, f"docs/{lang} shows only {sorted(used)}"


@pytest.mark.parametrize("lang", LANGS)
def test_every_cli_option_is_documented(lang):
    text = "\n".join(p.read_text(encoding="utf-8") for p in doc_files(lang))
    missing = []
    commands = [(name, sub) for name, sub in _subparsers(build_parser()).items()]
    commands += [(f"{name} {act}", p) for name, sub in commands for act, p in _actions_of(sub).items()]
    for name, sub in commands:
        for action in sub._actions:
            longs = [s for s in action.option_strings if s.startswith("--") and s != "--help"]
            if longs and not any(re.search(re.escape(s) + r"(?![\w-])", text) for s in longs):
                missing.append(f"foundry {name} {longs[0]}")
    assert not missing, f"docs/{lang} never mention: {missing}"


def test_command_checker_can_fail():
    parser = build_parser()
    assert check_command("foundry train --data d --out r", parser) == []
    assert check_command("foundry train --data d --out r --max-steps 5 lr=3e-4 model.dim=64", parser) == []
    assert check_command("foundry prepare INPUT... --tokenizer char|byte|bpe [--vocab-size N] --out DATA_DIR", parser) == []
    assert check_command("foundry generate MODEL --prompt \"ROMEO:\" --stop $'\\n\\n' | head -3", parser) == []
    assert check_command("foundry trian --data d --out r", parser)
    assert check_command("foundry train --data d --out r --no-such-option", parser)
    assert check_command("foundry generate MODEL [--max-tokens N]", parser)
    assert check_command("foundry prepare a.txt --tokenizer wordpiece --out d", parser)
    assert check_command("foundry train --data d --out r dimm=128", parser)
    assert check_command("foundry train --data d --out r lr=1e-3 --quiet dim=64", parser)
    assert check_command("foundry eval MODEL", parser)  # --data is required
    assert check_command("foundry memory update MEM 3 --text TEXT", parser) == []  # an action's options
    assert check_command("foundry memory list MEM --text TEXT", parser)


# ------------------------------------------------------------------------- links
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"`([^`]*)`", r"\1", heading.strip()).lower()
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    _, prose = split_fences(path.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    out = set()
    for line in prose:
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            s = slug(m.group(1))
            n = seen.get(s, 0)
            out.add(s if n == 0 else f"{s}-{n}")
            seen[s] = n + 1
    return out


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_relative_links_resolve(path):
    _, prose = split_fences(path.read_text(encoding="utf-8"))
    text = "\n".join(re.sub(r"`[^`]*`", "", line) for line in prose)
    bad = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file, _, frag = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists():
            bad.append(f"{target} (no such file)")
        elif frag and dest.suffix == ".md" and frag not in anchors(dest):
            bad.append(f"{target} (no heading #{frag} in {dest.name})")
    assert not bad, f"{path}: broken links: {bad}"


def test_link_checker_can_fail(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n## Some `code` part\n\nsee [x](missing.md) and [y](#some-code-part) and [z](#nope)\n",
                    encoding="utf-8")
    assert anchors(page) == {"title", "some-code-part"}
    assert slug("ModelConfig (`model:`)") == "modelconfig-model"
    assert slug("复用分词器：`--tokenizer-from`") == "复用分词器--tokenizer-from"
    links = LINK.findall(page.read_text(encoding="utf-8"))
    assert links == ["missing.md", "#some-code-part", "#nope"]


# ----------------------------------------------------------------- configuration
def field_tables(path: Path) -> dict[str, dict[str, str]]:
    """{"model": {field: default cell}, "train": {...}} from the ModelConfig / TrainConfig sections."""
    _, prose = split_fences(path.read_text(encoding="utf-8"))
    tables: dict[str, dict[str, str]] = {}
    section = None
    for line in prose:
        if line.startswith("## "):
            section = "model" if "ModelConfig" in line else "train" if "TrainConfig" in line else None
            if section:
                tables.setdefault(section, {})
            continue
        if section and line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            m = re.fullmatch(r"`(\w+)`", cells[0])
            if m:
                tables[section][m.group(1)] = cells[1] if len(cells) > 1 else ""
    return tables


@pytest.mark.parametrize("lang", LANGS)
def test_configuration_documents_every_field(lang):
    tables = field_tables(DOCS / lang / "configuration.md")
    for section, cls in SECTIONS.items():
        documented = set(tables.get(section, {}))
        real = {f.name for f in dataclasses.fields(cls)}
        assert documented - real == set(), f"{lang}: {section} documents unknown fields {sorted(documented - real)}"
        assert real - documented == set(), f"{lang}: {section} fields undocumented: {sorted(real - documented)}"


@pytest.mark.parametrize("lang", LANGS)
def test_configuration_defaults_are_real(lang):
    tables = field_tables(DOCS / lang / "configuration.md")
    wrong = []
    for section, cls in SECTIONS.items():
        defaults = {f.name: f.default for f in dataclasses.fields(cls)}
        for name, cell in tables.get(section, {}).items():
            m = re.fullmatch(r"`([^`]*)`", cell)
            assert m, f"{lang}: default of {section}.{name} should be one `literal`, got {cell!r}"
            if name in defaults and ast.literal_eval(m.group(1)) != defaults[name]:
                wrong.append(f"{section}.{name}: documented {m.group(1)}, real {defaults[name]!r}")
    assert not wrong, f"{lang}: {wrong}"


@pytest.mark.parametrize("lang", LANGS)
def test_config_names_in_configuration_exist(lang):
    """Every `model.x` / `train.x` (in an override or a YAML block) is a real field."""
    text = (DOCS / lang / "configuration.md").read_text(encoding="utf-8")
    named = re.findall(r"(?<![\w/.])(model|train)\.([A-Za-z_]\w*)(?=\s*=)", text)
    named += re.findall(r"`(model|train)\.([A-Za-z_]\w*)`", text)
    bad = [f"{s}.{n}" for s, n in named if not n.isupper() and not _config_key_known(f"{s}.{n}")]
    blocks, _ = split_fences(text)
    for info, code in blocks:
        if info.startswith("yaml"):
            data = yaml.safe_load("\n".join(code)) or {}
            for section, values in data.items():
                assert section in SECTIONS, f"{lang}: YAML section {section!r}"
                bad += [f"{section}.{k}" for k in (values or {}) if not _config_key_known(f"{section}.{k}")]
    assert not bad, f"{lang}: configuration.md names unknown fields {bad}"


@pytest.mark.parametrize("lang", LANGS)
def test_preset_table_matches_presets(lang):
    _, prose = split_fences((DOCS / lang / "configuration.md").read_text(encoding="utf-8"))
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in prose if line.startswith("|")]
    presets = set(list_presets())
    header, checked, wrong = None, set(), []
    for cells in rows:
        if set(cells[0]) <= set("-: "):
            continue
        m = re.fullmatch(r"`(\w+)`", cells[0])
        if not (m and m.group(1) in presets):
            header = cells
            continue
        model_cfg, train_cfg = load_config(m.group(1))
        values = {**dataclasses.asdict(model_cfg), **dataclasses.asdict(train_cfg)}
        for col, cell in zip(header[1:], cells[1:]):
            if col in values:
                checked.add((m.group(1), col))
                if ast.literal_eval(cell.strip("`")) != values[col]:
                    wrong.append(f"{m.group(1)}.{col}: documented {cell}, real {values[col]!r}")
    assert not wrong, f"{lang}: {wrong}"
    assert {p for p, _ in checked} == presets, f"{lang}: preset table covers {sorted({p for p, _ in checked})}"
