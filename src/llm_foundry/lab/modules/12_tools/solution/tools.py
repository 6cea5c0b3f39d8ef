"""Module 12: tool use — a safe calculator, and how its result is injected into the reply.

A chat model that has learned our tool tokens writes ``<|python_start|>37*12<|python_end|>`` when it
wants a number computed. The engine — not the model — then evaluates the expression and *forces*
``<|output_start|>444<|output_end|>`` into the reply; the model reads those tokens like any other
and goes on writing. Ours: ``src/llm_foundry/inference/tools.py`` (``calculate``) and
``inference/engine.py`` (``Engine._advance`` collects the expression, ``run_tool`` answers, the
forced tokens go into the stream with mask 0).

The expression is text a model wrote: it is parsed with :mod:`ast` and walked by our own evaluator.
Nothing is ever passed to ``eval`` or ``exec``, and every size is checked *before* it is computed.
"""

from __future__ import annotations

import ast
import math
import operator
from collections import deque
from typing import Sequence

import torch

from engine import KVCache, forward_cached, sample_next
from llm_foundry.tokenizers.special import (CHAT_TERMINATORS, OUTPUT_END, OUTPUT_START, PYTHON_END, PYTHON_START,
                                            token_ids)

MAX_EXPR_LEN = 500     # characters of an expression
MAX_NODES = 200        # parts (AST nodes) of an expression
MAX_INT_BITS = 4096    # the largest integer a result may be (~1233 decimal digits)

BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
          ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}


class CalcError(Exception):
    """A refusal or a failure; its message is what the model reads after ``error: ``."""


def calculate(expression: str) -> str:
    """The value of ``expression`` as text (``"6*7"`` -> ``"42"``), or ``"error: <why>"``.

    Allowed: int and float numbers, ``+ - * / // % **``, unary ``+ -``, parentheses. Anything else
    — names, attributes, calls, strings, comparisons — and anything too large is refused.
    """
    try:
        tree = parse(expression)
        return format_value(evaluate(tree.body))
    except CalcError as e:
        return f"error: {e}"
    except ZeroDivisionError:
        return "error: division by zero"
    except OverflowError:  # a float past 1.8e308, or an int too large to become a float
        return "error: number out of range"


def parse(expression: str) -> ast.Expression:
    """The syntax tree of ``expression``, after the checks that need no evaluation: text, not empty,
    at most ``MAX_EXPR_LEN`` characters, a valid expression, at most ``MAX_NODES`` parts.

    Raises:
        CalcError: naming the check that failed.
    """
    # BEGIN SOLUTION parse
    if not isinstance(expression, str):
        raise CalcError("the expression must be text")
    expr = expression.strip()
    if not expr:
        raise CalcError("empty expression")
    # Length first: the parser's own work (and its recursion) grows with the input.
    if len(expr) > MAX_EXPR_LEN:
        raise CalcError(f"expression too long ({len(expr)} characters, the limit is {MAX_EXPR_LEN})")
    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError as e:
        raise CalcError(f"not a valid expression ({e.msg})") from None
    except (RecursionError, MemoryError, ValueError):
        raise CalcError("expression too deeply nested or malformed") from None
    n = sum(1 for _ in ast.walk(tree))
    if n > MAX_NODES:
        raise CalcError(f"expression too large ({n} parts, the limit is {MAX_NODES})")
    return tree
    # END SOLUTION


def evaluate(node: ast.AST) -> int | float:
    """The value of a parsed expression, walking only the allowed nodes (a whitelist).

    Raises:
        CalcError: a node that is not allowed, or a result too large (:func:`check_size`) or complex.
    """
    # BEGIN SOLUTION evaluate
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):  # (not bool, not str)
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in BINARY:
        a, b = evaluate(node.left), evaluate(node.right)
        check_size(node.op, a, b)  # before computing: 9**9**9 would never finish
        value = BINARY[type(node.op)](a, b)
    elif isinstance(node, ast.UnaryOp) and type(node.op) in UNARY:
        value = UNARY[type(node.op)](evaluate(node.operand))
    else:
        raise CalcError(f"{type(node).__name__} is not allowed (numbers, + - * / // % ** and parentheses only)")
    if isinstance(value, complex):  # (-8) ** 0.5
        raise CalcError("the result is a complex number")
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:  # (check_size's estimate is a lower bound)
        raise CalcError(f"number too large (over {MAX_INT_BITS} bits)")
    return value
    # END SOLUTION


def check_size(op: ast.operator, a: int | float, b: int | float) -> None:
    """Refuse, before it is computed, an operation whose result would exceed ``MAX_INT_BITS`` bits.

    Raises:
        CalcError: a power or a product too large.
    """
    # BEGIN SOLUTION check_size
    if isinstance(op, ast.Pow) and isinstance(a, int) and isinstance(b, int):
        # |a| ** b has at least (bits of |a| - 1) * b bits, and at most twice that: estimated without
        # computing it. (evaluate checks the exact size of what is then computed.)
        if b > 0 and abs(a) > 1 and (abs(a).bit_length() - 1) * b > MAX_INT_BITS:
            raise CalcError(f"power too large (the result would exceed {MAX_INT_BITS} bits)")
    elif isinstance(op, ast.Mult) and isinstance(a, int) and isinstance(b, int):
        if a.bit_length() + b.bit_length() > MAX_INT_BITS + 1:
            raise CalcError(f"product too large (the result would exceed {MAX_INT_BITS} bits)")
    # END SOLUTION


def format_value(value: int | float) -> str:
    """The text the model reads, as ours: an integral float as an integer (``8/2`` -> ``4``), other
    floats with 12 significant digits.

    Raises:
        CalcError: the value is not finite (``1e308 * 10``).
    """
    if isinstance(value, float):
        if not math.isfinite(value):
            raise CalcError("the result is not a finite number")
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return format(value, ".12g")
    return str(value)


def generate_with_tools(model, tokenizer, prompt_ids: Sequence[int], max_new_tokens: int, *,
                        temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
                        seed: int | None = None) -> list[int]:
    """The reply's tokens after ``prompt_ids`` (a chat prompt that ends with ``<|assistant_start|>``),
    with the calculator's answers injected: when the model closes a python block, the tokens
    ``<|output_start|>result<|output_end|>`` are forced into the reply, fed to the model, and returned.

    The reply ends at a chat terminator (not returned), after ``max_new_tokens`` tokens (forced ones
    count), or when the context is full. Sampling as :func:`engine.generate`.
    """
    tid = tokenizer.token_id
    python_start, python_end = tid(PYTHON_START), tid(PYTHON_END)
    output_start, output_end = tid(OUTPUT_START), tid(OUTPUT_END)
    stop = token_ids(tokenizer, CHAT_TERMINATORS)
    prompt = list(prompt_ids)
    capacity = min(model.cfg.max_seq_len, len(prompt) + max_new_tokens)
    cache = KVCache.for_model(model, 1, capacity)
    gen = torch.Generator()  # the call's own randomness, as in your engine.generate
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(seed)
    model.eval()
    with torch.no_grad():
        logits = forward_cached(model, torch.tensor([prompt]), cache)[:, -1]
        out: list[int] = []
        forced: deque[int] = deque()   # the tool's answer, waiting to go into the reply
        expression: list[int] | None = None  # the ids of an open python block
        while len(prompt) + len(out) < capacity:
            # BEGIN SOLUTION inject
            # STUB: # forced tokens first (they are never sampled and never open or close a block); else sample,
            # STUB: # end at a terminator, and track the python block: on <|python_end|>, run calculate and queue
            # STUB: # <|output_start|> + the result's tokens + <|output_end|> as forced tokens
            # STUB: raise NotImplementedError("inject")
            if forced:
                tok = forced.popleft()
            else:
                tok = int(sample_next(logits, temperature, top_k, top_p, gen)[0])
                if tok in stop:
                    break
                if tok == python_start:
                    expression = []
                elif tok == python_end and expression is not None:
                    result = calculate(tokenizer.decode(expression))
                    forced.extend([output_start, *tokenizer.encode(result), output_end])
                    expression = None
                elif expression is not None:
                    expression.append(tok)
            # END SOLUTION
            out.append(tok)
            if len(prompt) + len(out) < capacity:  # the model reads every token, forced ones too
                logits = forward_cached(model, torch.tensor([[tok]]), cache)[:, -1]
    return out
