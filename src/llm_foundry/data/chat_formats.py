"""The SFT record formats users bring, read into our conversations (``{"role", "content"}`` lists).

One ``.jsonl`` file holds one format, found from its first record:

* **messages** (ours, OpenAI's): ``{"messages": [{"role": "user", "content": "..."}, ...]}``;
* **conversations** (ShareGPT, minimind): ``{"conversations": [{"from": "human", "value": "..."}, ...]}``,
  with ``from``/``value`` (roles ``human``/``user``, ``gpt``/``assistant``, ``system``) or
  ``role``/``content``;
* **alpaca**: ``{"instruction": "...", "input": "...", "output": "..."}`` (``input`` optional,
  joined to the instruction by a blank line), one user turn and one assistant turn.

A record of another format later in the file is refused with its line number (a mixed file is
usually two files pasted together by mistake); so is a record the format cannot read. Each
conversation is then checked by ``chat.validate_messages``, as conversations of our own are.
"""

from __future__ import annotations

from pathlib import Path

from ..utils.errors import FoundryError

FORMATS = ("messages", "conversations", "alpaca")
# ShareGPT's speaker names -> our roles (minimind writes ours directly).
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant",
                  "bard": "assistant", "model": "assistant", "system": "system"}


def record_format(obj: object) -> str | None:
    """The format of one record (see the module docstring), or None for none of them."""
    if not isinstance(obj, dict):
        return None
    if "messages" in obj:
        return "messages"
    if "conversations" in obj:
        return "conversations"
    if "instruction" in obj and "output" in obj:
        return "alpaca"
    return None


def _from_sharegpt(turns: object) -> list[dict]:
    if not isinstance(turns, list):
        raise FoundryError("'conversations' must be a list of turns")
    out = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise FoundryError(f"turn {i} of 'conversations' is not an object")
        speaker = turn.get("from", turn.get("role"))
        text = turn.get("value", turn.get("content"))
        role = SHAREGPT_ROLES.get(str(speaker).lower()) if speaker is not None else None
        if role is None:
            raise FoundryError(f"turn {i} of 'conversations' has speaker {speaker!r} "
                               "(expected human/user, gpt/assistant or system in 'from' or 'role')")
        if not isinstance(text, str):
            raise FoundryError(f"turn {i} of 'conversations' needs its text as a string in 'value' or 'content'")
        out.append({"role": role, "content": text})
    return out


def _from_alpaca(obj: dict) -> list[dict]:
    instruction, extra, output = obj.get("instruction"), obj.get("input") or "", obj.get("output")
    if not all(isinstance(v, str) for v in (instruction, extra, output)):
        raise FoundryError("'instruction', 'input' and 'output' must be strings")
    prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}]
    if isinstance(obj.get("system"), str) and obj["system"].strip():
        messages.insert(0, {"role": "system", "content": obj["system"]})
    return messages


def to_messages(obj: dict, fmt: str) -> list[dict]:
    """One record of format ``fmt`` as our conversation (not yet validated)."""
    if fmt == "messages":
        return obj["messages"]
    if fmt == "conversations":
        return _from_sharegpt(obj["conversations"])
    return _from_alpaca(obj)


def read_chat_records(path: str | Path) -> tuple[list[list[dict]], str]:
    """The conversations of a ``.jsonl`` file in any of :data:`FORMATS`, and the format found.

    Raises:
        FoundryError: ``FILE:LINE: reason`` for the first bad line: not JSON, no known format,
            another format than the file's first record, or a malformed conversation.
    """
    from .chat import validate_messages
    from .sources import iter_jsonl

    path = Path(path)
    if not path.is_file():
        raise FoundryError(f"conversation file not found: {path}")
    out: list[list[dict]] = []
    first: tuple[str, int] | None = None
    for n, obj in iter_jsonl(path):
        fmt = record_format(obj)
        if fmt is None:
            raise FoundryError(f"{path}:{n}: expected a chat record: {{\"messages\"}}, {{\"conversations\"}} "
                               "(ShareGPT, minimind) or {\"instruction\", \"input\", \"output\"} (Alpaca)")
        if first is None:
            first = (fmt, n)
        elif fmt != first[0]:
            raise FoundryError(f"{path}:{n}: a '{fmt}' record in a file of '{first[0]}' records (line {first[1]}); "
                               "one file holds one format")
        try:
            messages = to_messages(obj, fmt)
            validate_messages(messages)
        except FoundryError as e:
            raise FoundryError(f"{path}:{n}: {e}") from None
        out.append(messages)
    if not out:
        raise FoundryError(f"{path} holds no conversations")
    return out, first[0]
