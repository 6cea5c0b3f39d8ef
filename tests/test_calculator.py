"""The calculator tool: right answers, and refusals with clear messages that never run code."""

from __future__ import annotations

import tracemalloc

import pytest

from llm_foundry.inference.tools import MAX_EXPR_LEN, ToolError, calculate
from llm_foundry.utils.errors import FoundryError


@pytest.mark.parametrize("expr, value", [
    ("37*12", "444"), ("2 + 3", "5"), ("100-58", "42"), ("84/12", "7"), ("7/2", "3.5"), ("7//2", "3"),
    ("17 % 5", "2"), ("2**10", "1024"), ("-(3+4)*2", "-14"), ("0.1+0.2", "0.3"), ("1/3", "0.333333333333"),
    ("(1+2)*(3+4)", "21"), ("2**-1", "0.5"), ("123456789*987654321", "121932631112635269"),
    ('"strawberry".count("r")', "3"), ('"Hello".upper()', "HELLO"), ('"Hello".lower()', "hello"),
    ('"  x ".strip()', "x"), ('"banana".find("n")', "2"), ('"ab" + "cd"', "abcd"), ('"ab" * 3', "ababab"),
    ('"banana".replace("a", "o")', "bonono"), ('"apple".startswith("ap")', "True"),
])
def test_calculates(expr, value):
    assert calculate(expr) == value


@pytest.mark.parametrize("expr, fragment", [
    ("x + 1", "names are not allowed"),
    ("len('abc')", "names are not allowed"),
    ("__import__('os').system('echo hi')", "not allowed"),
    ("import os", "imports are not allowed"),
    ("from os import system", "imports are not allowed"),
    ("(1).__class__", "attribute '__class__' is not allowed"),
    ("'abc'.__len__()", "attribute '__len__' is not allowed"),
    ("'abc'.join(['a'])", "attribute 'join' is not allowed"),
    ("''.__class__.__mro__", "not allowed"),
    ("9**999999999", "power too large"),
    ("2**100000", "power too large"),
    ("(10**1000)*(10**1000)*(10**1000)*(10**1000)*(10**1000)", "too large"),
    ("'a'*10**9", "too long"),
    ("[x for x in range(10**12)]", "comprehensions"),
    ("sum(i for i in range(10**12))", "not allowed"),
    ("(lambda: 1)()", "not allowed"),
    ("1/0", "division by zero"),
    ("'a' - 1", "cannot evaluate"),
    ("1 +", "not a valid expression"),
    ("", "empty expression"),
    ("'%s' % 5", "not allowed"),
    ("'abc'[0]", "Subscript is not allowed"),
    ("(-8) ** 0.5", "complex"),
])
def test_refuses_with_a_clear_message(expr, fragment):
    with pytest.raises(ToolError) as info:
        calculate(expr)
    assert fragment in str(info.value)
    assert isinstance(info.value, FoundryError)  # the CLI prints it as one line
    assert "\n" not in str(info.value)


def test_size_limits():
    with pytest.raises(ToolError, match="too long"):
        calculate("1+" * MAX_EXPR_LEN + "1")
    with pytest.raises(ToolError, match="too large|too deeply"):
        calculate("+".join(["1"] * 240))
    with pytest.raises(ToolError, match="too large"):
        calculate("-" * 400 + "1")


def test_never_runs_python_code(tmp_path):
    marker = tmp_path / "pwned"
    attempts = [
        f"__import__('os').system('touch {marker}')",
        f"open('{marker}', 'w').write('x')",
        f"exec(\"open('{marker}','w')\")",
        f"eval(\"open('{marker}','w')\")",
        "().__class__.__base__.__subclasses__()",
        f"'{marker}'.format(open)",
    ]
    for expr in attempts:
        with pytest.raises(ToolError):
            calculate(expr)
    assert not marker.exists()


def test_huge_results_are_refused_before_they_are_computed():
    # Huge powers and products are refused by estimating the size first, not by computing them:
    # 99999**99999 alone would take ~200 KB, the others far more (or forever).
    tracemalloc.start()
    try:
        for expr in ("9**9**9**9", "(2**4000)**(2**4000)", "99999**99999", "'ab'.replace('', 'x'*5000)"):
            tracemalloc.reset_peak()
            with pytest.raises(ToolError, match="too large|too long"):
                calculate(expr)
            assert tracemalloc.get_traced_memory()[1] < 64_000, expr
    finally:
        tracemalloc.stop()
