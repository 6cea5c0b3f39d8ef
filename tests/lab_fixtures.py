"""A tiny Lab module written into a temporary folder, to exercise the engine without the real modules.

Module ``NN_arith``: one learner file ``arith.py`` with two solution blocks (``add``, ``neg``), a
visible and a hidden test file, three hints per task, three reflection questions, and one bug
variant (``sub``: ``add`` subtracts).
"""

from __future__ import annotations

from pathlib import Path

import yaml

SOLUTION = '''"""Two small functions."""


def add(a, b):
    """a + b."""
    # BEGIN SOLUTION add
    return a + b
    # END SOLUTION


def neg(x):
    """-x."""
    # BEGIN SOLUTION neg
    return -x
    # END SOLUTION
'''

VISIBLE = '''from arith import add, neg
from llm_foundry.lab.testing import check_equal


def test_add():
    check_equal("add(2, 3)", add(2, 3), 5, where=add)


def test_neg():
    check_equal("neg(4)", neg(4), -4, where=neg)
'''

HIDDEN = '''from arith import add, neg
from llm_foundry.lab.testing import check_equal


def test_add_negative():
    check_equal("add(-7, 2)", add(-7, 2), -5, where=add)


def test_neg_float():
    check_equal("neg(2.5)", neg(2.5), -2.5, where=neg)
'''

# What a learner writes when done (no markers, their own layout).
ANSWER = "def add(a, b):\n    return a + b\n\n\ndef neg(x):\n    return -x\n"


def make_module(root: Path, number: int = 1, visible: str = VISIBLE, hidden: str = HIDDEN,
                solution: str = SOLUTION, **meta) -> Path:
    """Write module ``number`` (folder ``NN_arith``) under ``root``; ``meta`` overrides module.yaml fields."""
    path = root / f"{number:02d}_arith"
    (path / "solution").mkdir(parents=True)
    (path / "tests" / "hidden").mkdir(parents=True)
    data = {
        "number": number, "slug": "arith", "title": {"en": f"Arithmetic {number}", "zh": f"算术 {number}"},
        "minutes": 5, "files": ["arith.py"], "library": ["src/llm_foundry/lab/testing.py"],
        "goals": [{"en": "add and negate", "zh": "加法和取负"}],
        "tasks": [{"id": t, "title": {"en": t, "zh": f"任务 {t}"},
                   "hints": [{"en": f"{t} hint {i}", "zh": f"{t} 提示 {i}"} for i in (1, 2, 3)]}
                  for t in ("add", "neg")],
        "reflection": [{"question": {"en": f"Question {i}?", "zh": f"问题 {i}？"},
                        "answer": {"en": f"Model answer {i}.", "zh": f"参考回答 {i}。"}} for i in (1, 2, 3)],
        "bugs": [{"id": "sub", "file": "arith.py", "block": "add", "code": "return a - b", "expect": "add(2, 3)",
                  "feedback": {"en": "You subtracted instead of adding.", "zh": "你做了减法而不是加法。"}}],
    }
    data.update(meta)
    (path / "module.yaml").write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    (path / "solution" / "arith.py").write_text(solution, encoding="utf-8")
    (path / "tests" / "test_arith.py").write_text(visible, encoding="utf-8")
    if hidden:
        (path / "tests" / "hidden" / "test_arith_hidden.py").write_text(hidden, encoding="utf-8")
    (path / "figures").mkdir()
    (path / "figures" / "sum.svg").write_text("<svg/>", encoding="utf-8")
    for lang, word in (("en", "Introduction"), ("zh", "介绍")):
        (path / f"intro.{lang}.md").write_text(f"# {word} {number}\n\nWrite `add` and `neg`.\n", encoding="utf-8")
        (path / f"task.{lang}.md").write_text(f"# Task {number}\n\nEdit arith.py.\n", encoding="utf-8")
    return path
