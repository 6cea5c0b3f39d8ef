"""Readers for local copies of public evaluation sets, and for our own chat ``.jsonl``.

Nothing is downloaded: a user who has the files points at them.

* GSM8K ``.jsonl``: ``{"question": ..., "answer": "... #### 42"}``;
* MMLU ``.csv`` (``question,A,B,C,D,answer`` rows, header optional) or ``.jsonl``
  (``{"question", "choices": [...], "answer": 0-3 or "A"-"D"}`` or with ``A``..``D`` keys);
* ARC ``.jsonl``, original (``{"question": {"stem", "choices": [{"text", "label"}]}, "answerKey"}``)
  or Hugging Face layout (``{"question": str, "choices": {"text": [...], "label": [...]}, "answerKey"}``);
* chat ``.jsonl``: ``{"messages": [...]}`` whose last turn is the reference reply,
  optionally with ``"answer"`` (what to compare) and ``"scorer"`` (``exact``, ``numeric`` or
  a built-in task name).

Every malformed record is a ``FoundryError("FILE:LINE: reason")``.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..data.sources import iter_jsonl
from ..utils.errors import FoundryError

LETTERS = "ABCDEFGHIJ"
FORMATS = ("gsm8k", "mmlu", "arc", "chat")


@dataclass
class TaskItem:
    """One question of a task.

    Attributes:
        messages: the prompt conversation (ends with a user turn).
        answer: generative tasks: the reference answer; choice tasks: the correct choice.
        choices: the continuations a multiple-choice task compares (None for generative).
    """

    messages: list[dict]
    answer: str
    choices: list[str] | None = None


def _jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    for n, obj in iter_jsonl(path):
        if not isinstance(obj, dict):
            raise FoundryError(f"{path}:{n}: expected a JSON object")
        yield n, obj


def choice_prompt(question: str, options: list[str]) -> list[dict]:
    """The user turn of a multiple-choice question: the question, lettered options, the instruction."""
    lines = [question.strip(), ""] + [f"{LETTERS[i]}. {o}" for i, o in enumerate(options)]
    lines += ["", "Answer with the letter of the correct choice."]
    return [{"role": "user", "content": "\n".join(lines)}]


def _choice_item(path: Path, n: int, question, options, answer) -> TaskItem:
    if not isinstance(question, str) or not question.strip():
        raise FoundryError(f"{path}:{n}: missing question text")
    if not isinstance(options, list) or not 2 <= len(options) <= len(LETTERS) or not all(isinstance(o, str) for o in options):
        raise FoundryError(f"{path}:{n}: choices must be a list of 2-{len(LETTERS)} strings")
    if isinstance(answer, int) and not isinstance(answer, bool) and 0 <= answer < len(options):
        index = answer
    elif isinstance(answer, str) and answer.strip().upper() in LETTERS[:len(options)] and answer.strip():
        index = LETTERS.index(answer.strip().upper())
    elif isinstance(answer, str) and answer.strip().isdigit() and 1 <= int(answer) <= len(options):
        index = int(answer) - 1  # ARC uses 1-4 for a few questions
    else:
        raise FoundryError(f"{path}:{n}: answer {answer!r} names none of the {len(options)} choices")
    letters = list(LETTERS[:len(options)])
    return TaskItem(choice_prompt(question, options), letters[index], letters)


def read_gsm8k(path: str | Path) -> list[TaskItem]:
    """GSM8K ``.jsonl``: the answer is the number after ``####``."""
    path = Path(path)
    items = []
    for n, obj in _jsonl(path):
        q, a = obj.get("question"), obj.get("answer")
        if not isinstance(q, str) or not isinstance(a, str) or "####" not in a:
            raise FoundryError(f"{path}:{n}: a GSM8K line needs 'question' and an 'answer' with '#### NUMBER'")
        final = a.rsplit("####", 1)[1].strip().replace(",", "")
        items.append(TaskItem([{"role": "user", "content": q}], final))
    return items


def read_mmlu(path: str | Path) -> list[TaskItem]:
    """MMLU as ``.csv`` (``question,A,B,C,D,answer``) or ``.jsonl``."""
    path = Path(path)
    items = []
    if path.suffix.lower() == ".csv":
        try:
            rows = list(csv.reader(path.read_text(encoding="utf-8").splitlines()))
        except UnicodeDecodeError:
            raise FoundryError(f"{path} is not UTF-8 text") from None
        for n, row in enumerate(rows, 1):
            if not row or not any(c.strip() for c in row):
                continue
            if n == 1 and row[0].strip().lower() == "question":
                continue  # header
            if len(row) < 4:
                raise FoundryError(f"{path}:{n}: an MMLU row is question, 2-{len(LETTERS)} choices, answer letter")
            items.append(_choice_item(path, n, row[0], row[1:-1], row[-1]))
        return items
    for n, obj in _jsonl(path):
        options = obj.get("choices")
        if options is None and all(k in obj for k in "ABCD"):
            options = [obj[k] for k in "ABCD"]
        items.append(_choice_item(path, n, obj.get("question"), options, obj.get("answer")))
    return items


def read_arc(path: str | Path) -> list[TaskItem]:
    """ARC ``.jsonl`` in the original or the Hugging Face layout."""
    path = Path(path)
    items = []
    for n, obj in _jsonl(path):
        q, key = obj.get("question"), obj.get("answerKey")
        try:
            if isinstance(q, dict):  # original: question.stem and question.choices
                stem, choices = q.get("stem"), q.get("choices") or []
                labels, texts = [c["label"] for c in choices], [c["text"] for c in choices]
            else:  # Hugging Face: question str, choices {"text": [...], "label": [...]}
                stem, texts, labels = q, obj["choices"]["text"], obj["choices"]["label"]
        except (KeyError, TypeError):
            raise FoundryError(f"{path}:{n}: an ARC line needs question, choices (text, label) and answerKey") from None
        if key not in labels:
            raise FoundryError(f"{path}:{n}: answerKey {key!r} is not one of the labels {labels}")
        items.append(_choice_item(path, n, stem, list(texts), labels.index(key)))
    return items


def read_chat_items(path: str | Path) -> tuple[list[TaskItem], str]:
    """Our chat ``.jsonl`` as a generative task; returns the items and the scorer name."""
    from ..data.chat import content_text, validate_messages

    path = Path(path)
    items, scorer = [], "exact"
    for n, obj in _jsonl(path):
        msgs = obj.get("messages")
        try:
            validate_messages(msgs)
        except FoundryError as e:
            raise FoundryError(f"{path}:{n}: {e}") from None
        if msgs[-1]["role"] != "assistant" and "answer" not in obj:
            raise FoundryError(f"{path}:{n}: the last message must be the reference assistant reply (or give 'answer')")
        answer = obj.get("answer", content_text(msgs[-1]["content"]) if msgs[-1]["role"] == "assistant" else "")
        if not isinstance(answer, str):
            raise FoundryError(f"{path}:{n}: 'answer' must be a string")
        scorer = obj.get("scorer", scorer)
        prompt = msgs[:-1] if msgs[-1]["role"] == "assistant" else msgs
        items.append(TaskItem(prompt, answer))
    return items, scorer


def detect_format(path: str | Path) -> str:
    """Which of :data:`FORMATS` a file is, from its extension and first record."""
    path = Path(path)
    if not path.is_file():
        raise FoundryError(f"task file not found: {path}")
    if path.suffix.lower() == ".csv":
        return "mmlu"
    for n, obj in _jsonl(path):
        if "messages" in obj:
            return "chat"
        if "answerKey" in obj:
            return "arc"
        if "choices" in obj or all(k in obj for k in "ABCD"):
            return "mmlu"
        if isinstance(obj.get("answer"), str) and "####" in obj["answer"]:
            return "gsm8k"
        raise FoundryError(f"{path}:{n}: cannot tell the format (expected GSM8K, MMLU, ARC or chat messages jsonl)")
    raise FoundryError(f"{path} holds no records")
