"""Hostile calculator input, as a model (or a prompt that steers it) could write between the
python tokens: each attack gets its exact refusal as the text the model reads back, no
exception escapes, and the call stays cheap (CPU time of the call, not a wall-clock window)."""

from __future__ import annotations

import time

import pytest

from llm_foundry.inference.engine import run_tool

POWER = "error: power too large (the result would exceed 4096 bits)"
NAMES = "error: calling '{}' is not allowed (names are not allowed)"
METHODS = "count, find, upper, lower, strip, replace, startswith, endswith"

ATTACKS = [
    # huge numbers: estimated and refused before they are computed
    ("power tower", "9**9**9", POWER),
    ("power of a power of ten", "10**10**10", POWER),
    ("negative base, 2**62 exponent", "(-2)**(2**62)", POWER),
    ("float power of 10**9", "1.0001**10**9", "error: power too large"),
    ("product of huge numbers", "10**400*10**400*10**400*10**400", "error: product too large (the result would exceed 4096 bits)"),
    ("sum past the int bound", "2**4095 + 2**4095", "error: number too large (over 4096 bits)"),
    ("factorial", "factorial(10**9)", NAMES.format("factorial")),
    ("math.comb", "math.comb(10**9, 10**8)", "error: attribute 'comb' is not allowed (string methods: " + METHODS + ")"),
    ("three-argument pow", "pow(2, 10**9, 7)", NAMES.format("pow")),
    ("bit shift", "1<<10**9", "error: BinOp is not allowed in a calculator expression"),
    # floats: overflow, infinities, NaN
    ("float overflow by product", "1e308*10", "error: the result is not a finite number"),
    ("float overflow by power", "1e308**2", "error: number out of range"),
    ("huge int to float", "10**1000/3", "error: number out of range"),
    ("infinite literal", "9.9e9999", "error: the result is not a finite number"),
    ("NaN", "float('nan')", NAMES.format("float")),
    ("division by zero", "1/0", "error: division by zero"),
    ("float modulo by zero", "0.0 % 0", "error: division by zero"),
    ("complex root", "(-1)**0.5", "error: the result is a complex number"),
    ("complex literal", "2**0.5j", "error: constant 0.5j is not allowed (numbers and strings only)"),
    # int -> str past Python's 4,300-digit limit
    ("int('9'*5000)", "int('9'*5000)", NAMES.format("int")),
    ("str of 10**5000", "str(10**5000)", NAMES.format("str")),
    # nesting and length
    ("parentheses 10,000 deep", "(" * 10_000 + "1" + ")" * 10_000, "error: expression too long (20001 characters, the limit is 500)"),
    ("unary minus x100,000", "-" * 100_000 + "1", "error: expression too long (100001 characters, the limit is 500)"),
    ("unary minus within the length", "-" * 400 + "1", "error: expression too large (802 parts, the limit is 200)"),
    ("parentheses within the length", "(" * 240 + "1" + ")" * 240, "error: not a valid expression (too many nested parentheses)"),
    ("1 MB of input", "1+" * 500_000 + "1", "error: expression too long (1000001 characters, the limit is 500)"),
    # escaping the sandbox
    ("class bases", "().__class__.__bases__", "error: attribute '__bases__' is not allowed"),
    ("subclasses", "''.__class__.__mro__[1].__subclasses__()",
     "error: attribute '__subclasses__' is not allowed (string methods: " + METHODS + ")"),
    ("dunder of a method", "'a'.upper.__globals__", "error: attribute '__globals__' is not allowed"),
    ("dunder name", "__builtins__", "error: names are not allowed ('__builtins__'); use numbers and string literals only"),
    ("__import__", "__import__('os').system('id')",
     "error: attribute 'system' is not allowed (string methods: " + METHODS + ")"),
    ("import statement", "import os", "error: imports are not allowed"),
    ("open", "open('/etc/passwd')", NAMES.format("open")),
    ("eval", "eval('1+1')", NAMES.format("eval")),
    ("exec", "exec('x=1')", NAMES.format("exec")),
    ("lambda", "(lambda: 1)()", "error: this call is not allowed (only string methods on a string literal can be called)"),
    ("comprehension", "[x for x in range(10**12)]", "error: loops, comprehensions and lambdas are not allowed"),
    ("generator", "sum(x for x in range(10**12))", NAMES.format("sum")),
    ("walrus", "(x := 5)", "error: NamedExpr is not allowed in a calculator expression"),
    ("f-string", "f'{9**9**9}'", "error: JoinedStr is not allowed in a calculator expression"),
    ("str.format", "'{0.__class__}'.format(1)", "error: attribute 'format' is not allowed (string methods: " + METHODS + ")"),
    ("%-formatting", "'%s' % 5", "error: string formatting with % is not allowed"),
    # memory through strings and containers
    ("string multiplication", "'a'*10**9", "error: string too long (the limit is 10000 characters)"),
    ("replace between every character", "'abc'.replace('', 'x'*3000)", "error: string too long (the limit is 10000 characters)"),
    ("str.ljust", "'a'.ljust(10**9)", "error: attribute 'ljust' is not allowed (string methods: " + METHODS + ")"),
    ("bytes", "b'a'*10**9", "error: constant b'a' is not allowed (numbers and strings only)"),
    ("list repetition", "[0]*10**9", "error: List is not allowed in a calculator expression"),
    ("tuple repetition", "(0,)*10**9", "error: Tuple is not allowed in a calculator expression"),
    # text that is not text
    ("Arabic-Indic digits", "١٢٣+1", "error: not a valid expression (invalid character '١' (U+0661))"),
    ("full-width digits", "１２３", "error: not a valid expression (invalid character '１' (U+FF11))"),
    ("null byte", "1\x002", "error: not a valid expression (it contains a null byte)"),
    ("lone surrogate", "'\\ud800'", "error: the string holds a lone surrogate (not valid text)"),
    ("surrogate through a method", "'\\udfff'.upper()", "error: the string holds a lone surrogate (not valid text)"),
]


@pytest.mark.parametrize("expr, refusal", [a[1:] for a in ATTACKS], ids=[a[0] for a in ATTACKS])
def test_an_attack_is_refused_exactly_and_quickly(expr, refusal):
    start = time.process_time()
    answer = run_tool(expr)  # what the engine feeds back to the model: never raises
    spent = time.process_time() - start
    assert answer == refusal
    assert spent < 1.0, f"{spent:.2f} s of CPU"


def test_there_are_at_least_25_attacks():
    assert len(ATTACKS) >= 25 and len({a[0] for a in ATTACKS}) == len(ATTACKS)


def test_a_refused_surrogate_keeps_the_engine_able_to_encode_the_answer():
    # The answer goes back through the tokenizer: it must be text every tokenizer can encode.
    from llm_foundry.tokenizers import build_tokenizer

    answer = run_tool("'\\ud800'")
    assert build_tokenizer("byte").encode(answer)
