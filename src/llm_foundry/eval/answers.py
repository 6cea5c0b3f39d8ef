"""Checking a model's answer: the verifiable reward of RL and the exact-match metric of eval.

Each built-in task (``data/synthetic.py``) and each file format (GSM8K, MMLU, ARC) names
a checker here; tool calls and tool outputs never count as the model's answer.
"""

from __future__ import annotations

import re

# Tool calls and tool outputs are never the model's answer.
_TOOL_BLOCK = re.compile(r"<\|(python|output)_start\|>.*?(<\|\1_end\|>|$)", re.S)
_SPECIAL = re.compile(r"<\|[a-z_]+\|>")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_MARKERS = re.compile(r"(?:answer\s*(?:is)?\s*[:：]?|答案\s*(?:是)?\s*[:：]?|####)", re.I)
_SPELLED = re.compile(r"(?<![A-Za-z])[A-Za-z](?:\s*-\s*[A-Za-z])+(?![A-Za-z])")


def _visible(completion: str) -> str:
    """What the model itself wrote: tool calls, tool outputs and special tokens removed.

    Pass completions decoded with ``skip_special=False`` so a tool's result is never
    mistaken for the model's answer; plain text works too.
    """
    return _SPECIAL.sub(" ", _TOOL_BLOCK.sub(" ", completion))


def extract_number(text: str) -> float | None:
    """The final answer as a number: the first number after the last answer marker
    (``Answer:``, ``答案：``, ``####``), else the last number in ``text``; None if there is none."""
    text = _visible(text)
    markers = list(_MARKERS.finditer(text))
    tail = text[markers[-1].end():] if markers else None
    found = _NUMBER.findall(tail) if tail is not None else []
    if found:
        token = found[0]
    else:
        found = _NUMBER.findall(text)
        if not found:
            return None
        token = found[-1]
    try:
        return float(token.replace(",", ""))
    except ValueError:
        return None


def numbers_equal(a: float | None, b: float | None) -> bool:
    """Equal up to a relative 1e-6 (answers like 2.33333333333 vs 7/3)."""
    if a is None or b is None:
        return False
    return abs(a - b) <= 1e-6 * max(1.0, abs(a), abs(b))


def _normalise(text: str) -> str:
    return " ".join(_visible(text).strip().strip("。.!！").casefold().split())


def score_answer(task: str, completion: str, answer: str) -> float:
    """1.0 if ``completion`` answers correctly, else 0.0: the verifiable reward and exact-match metric.

    * ``arithmetic``, ``count_letters``, ``numeric``: the number after the last answer
      marker (else the last number) equals ``answer`` numerically;
    * ``spelling``: the last dash-spelled sequence (``a-p-p-l-e``) spells ``answer``;
    * ``identity``: the name appears (case-insensitive);
    * ``copy``: the normalised reply equals ``answer`` (as ``exact``);
    * ``facts``: the answer appears as a whole word (case-sensitive for symbols of one or two letters);
    * ``exact`` or any other name: the normalised text equals ``answer``.

    Tool calls and outputs (``<|python_start|>...<|python_end|>``, ``<|output_start|>...<|output_end|>``)
    never count as the answer.
    """
    if task in ("arithmetic", "count_letters", "numeric"):
        try:
            target = float(answer.replace(",", "").strip())
        except ValueError:
            target = extract_number(answer)
        return float(numbers_equal(extract_number(completion), target))
    text = _visible(completion)
    if task == "spelling":
        found = _SPELLED.findall(text)
        return float(bool(found) and re.sub(r"[\s-]", "", found[-1]).lower() == answer.replace("-", "").lower())
    if task == "identity":
        return float(answer.casefold() in text.casefold())
    if task == "facts":
        if re.search(r"[A-Za-z]", answer):
            flags = 0 if len(answer) <= 2 else re.I
            return float(bool(re.search(rf"(?<![A-Za-z]){re.escape(answer)}(?![A-Za-z])", text, flags)))
        return float(answer in text)
    return float(_normalise(completion) == _normalise(answer))
