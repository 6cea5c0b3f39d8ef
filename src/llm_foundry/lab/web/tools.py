"""Editor services for the page's Monaco editor, and the advisory similarity check.

Completion is jedi's (static analysis: it never runs the learner's code); lint and format are
ruff's, run as a subprocess on the text (``--isolated``: no configuration file is read). Both are
optional (the ``lab-web`` extra): without them the editor still highlights, and these say why not.
"""

from __future__ import annotations

import ast
import difflib
import io
import json
import subprocess
import tokenize

from ...utils.errors import FoundryError

MAX_SOURCE = 1 << 20
LINT_RULES = "E4,E7,E9,F"
SIMILAR = 0.9  # token or AST similarity at or above this is "very close to the reference"


def complete(source: str, line: int, column: int, limit: int = 50) -> list[dict[str, str]]:
    """Completions at 1-based ``line`` and 0-based ``column``: ``[{"label", "kind", "detail"}]``."""
    try:
        import jedi
    except ImportError:
        raise FoundryError("completion needs jedi: pip install 'llm-foundry[lab-web]'") from None
    try:
        found = jedi.Script(source).complete(line, column)
    except ValueError as e:  # a position outside the text
        raise FoundryError(f"no such position: {e}") from None
    return [{"label": c.name, "kind": c.type, "detail": c.description} for c in found[:limit]]


def _ruff(args: list[str], source: str, name: str) -> subprocess.CompletedProcess:
    try:
        from ruff.__main__ import find_ruff_bin
        exe = find_ruff_bin()
    except (ImportError, FileNotFoundError):
        raise FoundryError("lint and format need ruff: pip install 'llm-foundry[lab-web]'") from None
    try:
        return subprocess.run([exe, *args, "--isolated", "--stdin-filename", name, "-"], input=source, text=True,
                              capture_output=True, timeout=20)
    except subprocess.TimeoutExpired:
        raise FoundryError("ruff took too long") from None


def lint(source: str, name: str = "code.py") -> list[dict]:
    """ruff's findings: ``[{"code", "message", "line", "column", "end_line", "end_column"}]`` (1-based)."""
    # ruff's classic default rules (pyflakes, syntax, statements), whatever a newer ruff defaults to
    done = _ruff(["check", "--select", LINT_RULES, "--output-format", "json", "--exit-zero"], source, name)
    try:
        found = json.loads(done.stdout or "[]")
    except ValueError:
        raise FoundryError(f"ruff failed: {done.stderr.strip()[:300]}") from None
    return [{"code": f.get("code") or "E999", "message": f["message"], "line": f["location"]["row"],
             "column": f["location"]["column"], "end_line": f["end_location"]["row"],
             "end_column": f["end_location"]["column"]} for f in found]


def format_source(source: str, name: str = "code.py") -> str:
    """The text as ``ruff format`` writes it; a one-line error when it cannot be parsed."""
    done = _ruff(["format"], source, name)
    if done.returncode != 0:
        raise FoundryError("cannot format: " + (done.stderr.strip().splitlines() or ["ruff failed"])[-1][:300])
    return done.stdout


# ----------------------------------------------------------------------------- similarity
def _tokens(source: str) -> list[str]:
    """The code's tokens, comments and layout left out (renaming nothing: a copy keeps the names)."""
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER}
    try:
        return [t.string for t in tokenize.generate_tokens(io.StringIO(source).readline) if t.type not in skip]
    except (tokenize.TokenError, SyntaxError, IndentationError):
        return source.split()


def _shape(source: str) -> list[str]:
    """The node types of the code's syntax tree in walk order (names and constants left out)."""
    try:
        return [type(n).__name__ for n in ast.walk(ast.parse(source))]
    except (SyntaxError, ValueError):
        return []


def similarity(mine: str, reference: str) -> dict[str, float]:
    """Token and syntax-tree similarity of two sources, each in [0, 1] (difflib's ratio)."""
    tok = difflib.SequenceMatcher(None, _tokens(mine), _tokens(reference), autojunk=False).ratio()
    a, b = _shape(mine), _shape(reference)
    tree = difflib.SequenceMatcher(None, a, b, autojunk=False).ratio() if a and b else 0.0
    return {"tokens": round(tok, 3), "ast": round(tree, 3)}
