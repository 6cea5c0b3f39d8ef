"""Module 13: evaluation tasks, rebuilt — checking an answer, scoring a model on tasks, and a report.

Our evaluation lives in ``src/llm_foundry/eval/``: ``answers.py`` decides whether a reply is right
(``score_answer``: the number after the last "Answer:", a dash-spelled word, a name, an exact text),
``tasks.py`` wraps a list of questions and a checker into a ``Task`` and scores a model on it
(``evaluate_task``: render the prompt, generate greedily, decode with the special tokens kept, check),
and ``foundry eval-chat`` prints each task's accuracy and their mean. Here you write the same pieces
for any ``answer_fn(prompt_messages) -> reply text`` — a model, or anything that answers — plus the
two things a table of accuracies needs to be read honestly: a confidence interval and a comparison.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable

# The tokens of a tool call and of its output (as in our eval/answers.py): the calculator's result is
# written by the engine, not by the model, so it must never count as the model's answer.
TOOL_BLOCK = re.compile(r"<\|(python|output)_start\|>.*?(<\|\1_end\|>|$)", re.S)
SPECIAL = re.compile(r"<\|[a-z_]+\|>")
NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
MARKERS = re.compile(r"(?:answer\s*(?:is)?\s*[:：]?|答案\s*(?:是)?\s*[:：]?|####)", re.I)
SPELLED = re.compile(r"(?<![A-Za-z])[A-Za-z](?:\s*-\s*[A-Za-z])+(?![A-Za-z])")

# Which checker each of our built-in tasks uses (data/synthetic.py: TASKS).
CHECKERS = {"arithmetic": "numeric", "count_letters": "numeric", "spelling": "spelling", "identity": "contains",
            "copy": "exact", "facts": "word"}


def visible(completion: str) -> str:
    """What the model itself wrote: every tool call and tool output block removed (an unfinished one
    runs to the end), then every other special token replaced by a space."""
    # BEGIN SOLUTION visible
    # STUB: # 1. TOOL_BLOCK.sub(" ", ...) removes <|python_start|>…<|python_end|> and <|output_start|>…<|output_end|>
    # STUB: # 2. SPECIAL.sub(" ", ...) replaces what is left of <|…|> tokens
    # STUB: raise NotImplementedError("visible")
    return SPECIAL.sub(" ", TOOL_BLOCK.sub(" ", completion))
    # END SOLUTION


def extract_number(text: str) -> float | None:
    """The reply's final answer as a number: the first number after the LAST answer marker
    ("Answer:", "答案：", "####"), else the last number of the reply; None when there is none.
    Only the visible text counts; thousands separators are dropped ("1,234" is 1234.0)."""
    # BEGIN SOLUTION extract_number
    # STUB: # visible text -> the last MARKERS match -> NUMBER.findall after it (else in the whole text) -> float
    # STUB: raise NotImplementedError("extract_number")
    text = visible(text)
    markers = list(MARKERS.finditer(text))
    found = NUMBER.findall(text[markers[-1].end():]) if markers else []
    if found:
        token = found[0]  # the answer follows its marker: "Answer: 12. Check: 12 + 3 = 15" is 12
    else:
        found = NUMBER.findall(text)
        if not found:
            return None
        token = found[-1]  # no marker: the reply's conclusion comes last
    try:
        return float(token.replace(",", ""))
    except ValueError:  # a lone "-" or "1,,": no number after all
        return None
    # END SOLUTION


def normalise(text: str) -> str:
    """Visible text, stripped of surrounding space and a final full stop, casefolded, spaces collapsed."""
    return " ".join(visible(text).strip().strip("。.!！").casefold().split())


@dataclass
class Task:
    """A named list of examples and how to check a reply to one of them.

    Attributes:
        name: shown in results and reports.
        examples: objects with ``.prompt`` (the chat messages to answer) and ``.answer`` (the
            reference), as ``llm_foundry.data.synthetic.Example``.
        checker: ``numeric``, ``spelling``, ``contains``, ``word`` or ``exact`` (default: the one
            ``CHECKERS`` gives a built-in task of this name, else ``exact``).
    """

    name: str
    examples: list
    checker: str = ""

    def __post_init__(self):
        self.checker = self.checker or CHECKERS.get(self.name, "exact")

    def check(self, example: Any, answer: str) -> bool:
        """Whether ``answer`` (a reply, special tokens kept) answers ``example`` right."""
        want = str(example.answer)
        # BEGIN SOLUTION check
        # STUB: # numeric: extract_number on both sides, equal up to 1e-6 relative; spelling: the last SPELLED match,
        # STUB: # dashes and spaces removed, equals the answer (casefolded); contains / word / exact: see TASK.md
        # STUB: raise NotImplementedError("check")
        if self.checker == "numeric":
            got, target = extract_number(answer), extract_number(want)
            return got is not None and target is not None and abs(got - target) <= 1e-6 * max(1.0, abs(got), abs(target))
        text = visible(answer)
        if self.checker == "spelling":
            found = SPELLED.findall(text)
            return bool(found) and re.sub(r"[\s-]", "", found[-1]).casefold() == want.replace("-", "").casefold()
        if self.checker == "contains":
            return want.casefold() in text.casefold()
        if self.checker == "word":  # a whole word; symbols of one or two letters keep their case (Fe, not fe)
            if not re.search(r"[A-Za-z]", want):
                return want in text
            flags = 0 if len(want) <= 2 else re.I
            return re.search(rf"(?<![A-Za-z]){re.escape(want)}(?![A-Za-z])", text, flags) is not None
        return normalise(answer) == normalise(want)
        # END SOLUTION


def wilson_interval(correct: float, total: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of an accuracy ``correct / total`` (95 % for z = 1.96): a range that
    stays inside [0, 1] and is not empty at 0 or ``total`` correct. ``(0.0, 1.0)`` when total is 0."""
    # BEGIN SOLUTION wilson
    # STUB: # p = correct / total; centre = (p + z²/2n) / (1 + z²/n); half = z·sqrt(p(1−p)/n + z²/4n²) / (1 + z²/n)
    # STUB: raise NotImplementedError("wilson")
    if total == 0:
        return 0.0, 1.0
    p, n = correct / total, total
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)
    # END SOLUTION


def evaluate(answer_fn: Callable[[list[dict]], str], tasks: list[Task]) -> dict:
    """Ask ``answer_fn`` every example's prompt and check each reply with its task.

    Returns ``{"tasks": {name: {"accuracy", "correct", "total", "interval"}}, "macro": …, "micro": …}``:
    per task its accuracy, the number right and asked, and its Wilson interval as ``[low, high]``;
    ``macro`` is the mean of the tasks' accuracies (each task counts the same, as our
    ``foundry eval-chat`` aggregate), ``micro`` the share of all examples answered right (each
    example counts the same). A task without examples has accuracy 0.0 and is left out of both means.
    """
    # BEGIN SOLUTION evaluate
    # STUB: # for each task: reply = answer_fn(example.prompt) for each example, count task.check(example, reply)
    # STUB: # then per-task accuracy and interval, the macro mean over tasks and the micro share over examples
    # STUB: raise NotImplementedError("evaluate")
    per_task, right, asked = {}, 0, 0
    for task in tasks:
        correct = sum(bool(task.check(ex, answer_fn(ex.prompt))) for ex in task.examples)
        total = len(task.examples)
        per_task[task.name] = {"accuracy": correct / total if total else 0.0, "correct": correct, "total": total,
                               "interval": list(wilson_interval(correct, total))}
        right, asked = right + correct, asked + total
    counted = [r["accuracy"] for r in per_task.values() if r["total"]]
    return {"tasks": per_task, "macro": sum(counted) / len(counted) if counted else 0.0,
            "micro": right / asked if asked else 0.0}
    # END SOLUTION


def compare_table(baseline: dict, candidate: dict, names: tuple[str, str] = ("baseline", "yours")) -> str:
    """A markdown table comparing two results of :func:`evaluate` task by task.

    Columns: ``task``, the two models (``"45.0% (9/20)"``), and ``change`` — candidate minus baseline
    in percentage points with its sign (``"+10.0"``, ``"-5.0"``, ``"+0.0"``). One row per task of the
    baseline in its order (``–`` for a model without that task, and no change), then ``macro`` and
    ``micro`` rows (percentages only). Ends with a newline.
    """
    # BEGIN SOLUTION compare_table
    # STUB: # header, |---| separator, one row per task, then the macro and micro rows
    # STUB: raise NotImplementedError("compare_table")
    def cell(r: dict | None) -> str:
        return "–" if r is None else f"{r['accuracy'] * 100:.1f}% ({r['correct']:g}/{r['total']})"

    lines = [f"| task | {names[0]} | {names[1]} | change |", "|---|---|---|---|"]
    for task, base in baseline["tasks"].items():
        cand = candidate["tasks"].get(task)
        change = "–" if cand is None else f"{(cand['accuracy'] - base['accuracy']) * 100:+.1f}"
        lines.append(f"| {task} | {cell(base)} | {cell(cand)} | {change} |")
    for mean in ("macro", "micro"):
        b, c = baseline[mean], candidate[mean]
        lines.append(f"| {mean} | {b * 100:.1f}% | {c * 100:.1f}% | {(c - b) * 100:+.1f} |")
    return "\n".join(lines) + "\n"
    # END SOLUTION


# ---------------------------------------------------------------- a model as an answer_fn
def greedy_reply(model, tokenizer, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    """The model's greedy reply to ``prompt_ids`` (given): the most likely token each step, never
    ``<|pad|>``/``<|unk|>``, until a chat terminator (not included) or ``max_new_tokens``.
    Recomputes the whole context each step — slow, simple and enough for a tiny model (module 11's
    KV cache is how our Engine does it fast)."""
    import torch

    from llm_foundry.tokenizers.special import CHAT_TERMINATORS, NEVER_SAMPLED, token_ids

    stop, never = token_ids(tokenizer, CHAT_TERMINATORS), sorted(token_ids(tokenizer, NEVER_SAMPLED))
    ids, out = list(prompt_ids), []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for _ in range(max_new_tokens):
                if len(ids) >= model.cfg.max_seq_len:
                    break
                logits = model(torch.tensor([ids]))[0][0, -1].float()
                logits[never] = -math.inf
                token = int(logits.argmax())
                if token in stop:
                    break
                ids.append(token)
                out.append(token)
    finally:
        model.train(was_training)
    return out


def model_answer_fn(model, tokenizer, max_new_tokens: int = 32) -> Callable[[list[dict]], str]:
    """An ``answer_fn`` for :func:`evaluate` that asks ``model``: the prompt rendered with our chat
    template and ``<|assistant_start|>`` (``llm_foundry.data.chat.render_prompt``), the greedy
    reply, decoded WITH its special tokens so that the checker can see and drop tool blocks."""
    # BEGIN SOLUTION answer_fn
    # STUB: # return a function of the prompt messages: render_prompt -> greedy_reply -> tokenizer.decode(..., skip_special=False)
    # STUB: raise NotImplementedError("answer_fn")
    from llm_foundry.data.chat import render_prompt

    def answer(prompt: list[dict]) -> str:
        reply = greedy_reply(model, tokenizer, render_prompt(tokenizer, prompt), max_new_tokens)
        return tokenizer.decode(reply, skip_special=False)

    return answer
    # END SOLUTION
