"""The calculator tool: a safe evaluator of arithmetic and a few string operations.

The expression is parsed with :mod:`ast` and walked by our own evaluator; nothing is
ever passed to ``eval``/``exec``, so no Python code runs. Allowed:

* numbers (int, float) and string literals;
* ``+ - * / // % **`` and unary ``+ -``, parentheses;
* a few methods called on a string literal with literal arguments:
  ``"strawberry".count("r")``, ``find``, ``upper``, ``lower``, ``strip``, ``replace``,
  ``startswith``, ``endswith``.

Refused with a clear :class:`ToolError`: names (``x``, ``len``, ``__import__``),
attributes other than those methods, imports, calls of anything else, comprehensions,
lambdas, subscripts; and anything too big: the expression's length, its node count,
powers whose result would exceed ``MAX_INT_BITS``, products of huge numbers, strings
over ``MAX_STR_LEN`` or holding a lone surrogate (``'\\ud800'``: a tokenizer reads the result
back and cannot encode it), and evaluation past ``TIME_LIMIT_S`` of CPU time. There are no
loops, so no long loop can run.
"""

from __future__ import annotations

import ast
import math
import operator
import time

from ..utils.errors import FoundryError

MAX_EXPR_LEN = 500        # characters of the expression
MAX_NODES = 200           # AST nodes
MAX_INT_BITS = 4096       # ~1233 decimal digits
MAX_STR_LEN = 10_000      # characters of any string value
TIME_LIMIT_S = 0.5        # CPU-time budget of one evaluation (a backstop: sizes are bounded first)

STRING_METHODS = ("count", "find", "upper", "lower", "strip", "replace", "startswith", "endswith")

_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}


class ToolError(FoundryError):
    """The calculator refused or could not evaluate an expression."""


def calculate(expression: str) -> str:
    """Evaluate ``expression`` safely and return its value as text.

    Integral floats print as integers (``8/2`` -> ``4``); other floats with up to 12
    significant digits; strings as they are; booleans as ``True``/``False``.

    Raises:
        ToolError: the expression is not allowed, too large, too slow or fails
            (division by zero, a type mismatch); the message says which.
    """
    if not isinstance(expression, str):
        raise ToolError("the expression must be text")
    expr = expression.strip()
    if not expr:
        raise ToolError("empty expression")
    if len(expr) > MAX_EXPR_LEN:
        raise ToolError(f"expression too long ({len(expr)} characters, the limit is {MAX_EXPR_LEN})")
    if "\x00" in expr:  # refused here: Python's parser words (and types) this error differently across releases
        raise ToolError("not a valid expression (it contains a null byte)")
    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError as e:
        # `import os` and statements in general land here: only expressions parse in eval mode.
        word = expr.split()[0] if expr.split() else ""
        if word in ("import", "from"):
            raise ToolError("imports are not allowed") from None
        raise ToolError(f"not a valid expression ({e.msg})") from None
    except (RecursionError, MemoryError, ValueError):
        raise ToolError("expression too deeply nested or malformed") from None
    n = sum(1 for _ in ast.walk(tree))
    if n > MAX_NODES:
        raise ToolError(f"expression too large ({n} parts, the limit is {MAX_NODES})")
    try:
        value = _Evaluator(time.thread_time() + TIME_LIMIT_S).eval(tree.body)
    except ToolError:
        raise
    except ZeroDivisionError:
        raise ToolError("division by zero") from None
    except OverflowError:  # a float past 1.8e308, or an int too large for a float or an index
        raise ToolError("number out of range") from None
    except (TypeError, ValueError) as e:
        raise ToolError(f"cannot evaluate: {e}") from None
    except RecursionError:
        raise ToolError("expression too deeply nested") from None
    return format_value(value)


def format_value(value: object) -> str:
    """The text the model sees for a calculator result."""
    if isinstance(value, bool) or isinstance(value, str):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            raise ToolError("the result is not a finite number")
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return format(value, ".12g")
    return str(value)


class _Evaluator:
    """Walks an expression tree, allowing only whitelisted nodes."""

    def __init__(self, deadline: float):
        self.deadline = deadline

    def eval(self, node: ast.AST):
        # CPU time of this thread, not wall time: a busy machine must not fail a small sum.
        if time.thread_time() > self.deadline:
            raise ToolError(f"time limit exceeded ({TIME_LIMIT_S} s)")
        if isinstance(node, ast.Constant):
            v = node.value
            if isinstance(v, bool) or not isinstance(v, (int, float, str)):
                raise ToolError(f"constant {v!r} is not allowed (numbers and strings only)")
            return self._check(v)
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            left, right = self.eval(node.left), self.eval(node.right)
            self._guard(node.op, left, right)
            return self._check(_BINOPS[type(node.op)](left, right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            v = self.eval(node.operand)
            if isinstance(v, str):
                raise ToolError("unary minus/plus needs a number")
            return _UNARY[type(node.op)](v)
        if isinstance(node, ast.Call):
            return self._call(node)
        if isinstance(node, ast.Name):
            raise ToolError(f"names are not allowed ({node.id!r}); use numbers and string literals only")
        if isinstance(node, ast.Attribute):
            raise ToolError(f"attribute {node.attr!r} is not allowed")
        if isinstance(node, (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp, ast.Lambda)):
            raise ToolError("loops, comprehensions and lambdas are not allowed")
        raise ToolError(f"{type(node).__name__} is not allowed in a calculator expression")

    def _call(self, node: ast.Call):
        f = node.func
        if isinstance(f, ast.Name):
            raise ToolError(f"calling {f.id!r} is not allowed (names are not allowed)")
        if not isinstance(f, ast.Attribute):
            raise ToolError("this call is not allowed (only string methods on a string literal can be called)")
        if f.attr not in STRING_METHODS:
            raise ToolError(f"attribute {f.attr!r} is not allowed (string methods: {', '.join(STRING_METHODS)})")
        if not (isinstance(f.value, ast.Constant) and isinstance(f.value.value, str)):
            raise ToolError(f"the method {f.attr!r} may only be called on a string literal")
        if node.keywords:
            raise ToolError("keyword arguments are not allowed")
        args = [self.eval(a) for a in node.args]
        if not all(isinstance(a, (str, int)) and not isinstance(a, bool) for a in args):
            raise ToolError(f"arguments of {f.attr!r} must be strings or integers")
        if f.attr == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
            # Bound the result's length before building it ("" matches between every character).
            s, old, new = f.value.value, args[0], args[1]
            hits = s.count(old) if old else len(s) + 1
            if len(s) + hits * len(new) > MAX_STR_LEN:
                raise ToolError(f"string too long (the limit is {MAX_STR_LEN} characters)")
        return self._check(getattr(f.value.value, f.attr)(*args))

    @staticmethod
    def _guard(op: ast.operator, a, b) -> None:
        """Refuse, before computing, operations whose result would be too large."""
        if isinstance(op, ast.Pow) and isinstance(a, (int, float)) and isinstance(b, (int, float)):
            if isinstance(a, int) and isinstance(b, int):
                if b > 0 and abs(a) > 1 and max(1, abs(a).bit_length() - 1) * b > MAX_INT_BITS:
                    raise ToolError(f"power too large (the result would exceed {MAX_INT_BITS} bits)")
            elif abs(b) > 10_000:
                raise ToolError("power too large")
        elif isinstance(op, ast.Mult):
            if isinstance(a, int) and isinstance(b, int) and a.bit_length() + b.bit_length() > MAX_INT_BITS + 1:
                raise ToolError(f"product too large (the result would exceed {MAX_INT_BITS} bits)")
            if isinstance(a, str) or isinstance(b, str):
                s, k = (a, b) if isinstance(a, str) else (b, a)
                if isinstance(k, int) and len(s) * k > MAX_STR_LEN:
                    raise ToolError(f"string too long (the limit is {MAX_STR_LEN} characters)")
        elif isinstance(op, ast.Mod) and (isinstance(a, str)):
            raise ToolError("string formatting with % is not allowed")

    @staticmethod
    def _check(v):
        if isinstance(v, complex):
            raise ToolError("the result is a complex number")
        if isinstance(v, int) and not isinstance(v, bool) and v.bit_length() > MAX_INT_BITS:
            raise ToolError(f"number too large (over {MAX_INT_BITS} bits)")
        if isinstance(v, str) and len(v) > MAX_STR_LEN:
            raise ToolError(f"string too long (the limit is {MAX_STR_LEN} characters)")
        if isinstance(v, str) and not v.isascii():
            try:  # '\ud800' is a str but not text: the tokenizer that reads the result back cannot encode it
                v.encode("utf-8")
            except UnicodeEncodeError:
                raise ToolError("the string holds a lone surrogate (not valid text)") from None
        return v
