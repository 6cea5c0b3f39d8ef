"""Conversations: validation, the token layout of a chat, and the loss mask.

A message is ``{"role": "system"|"user"|"assistant", "content": str | list[part]}``;
an assistant's content may be a list of parts::

    {"type": "text", "text": "..."}           what the assistant writes
    {"type": "python", "text": "37*12"}       a tool call (an expression for the calculator)
    {"type": "python_output", "text": "444"}  the tool's result (written by the engine, not the model)

Layout, in special tokens (see ``tokenizers/special.py``)::

    <|bos|> <|user_start|>text<|user_end|> <|assistant_start|>parts<|assistant_end|> ...

where a python part is ``<|python_start|>expr<|python_end|>`` and an output part is
``<|output_start|>result<|output_end|>``. A system message is merged into the first
user message (its text, a blank line, then the user's text), as nanochat does.

Special-token ids are inserted directly, never by encoding their strings, so a user
who types ``<|assistant_end|>`` gets those characters, not the token.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..tokenizers import Tokenizer
from ..tokenizers.special import BOS, CHAT_SPECIAL_TOKENS
from ..utils.errors import FoundryError
from .sources import iter_jsonl

ROLES = ("system", "user", "assistant")
PART_TYPES = ("text", "python", "python_output")


def chat_token_ids(tokenizer: Tokenizer) -> dict[str, int]:
    """Ids of ``<|bos|>`` and the chat tokens, keyed by their short names (``bos``, ``user_start``, ...).

    Raises:
        FoundryError: the tokenizer lacks one of them (a char tokenizer built from plain text).
    """
    ids = {}
    for tok in (BOS, *CHAT_SPECIAL_TOKENS):
        i = tokenizer.token_id(tok)
        if i is None:
            raise FoundryError(f"the tokenizer has no {tok} token; chat needs a byte or bpe tokenizer "
                               "(they reserve the chat tokens)")
        ids[tok[2:-2]] = i
    return ids


def content_parts(content: str | list[dict]) -> list[dict]:
    """A message's content as a list of parts (a plain string is one text part)."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return list(content)


def content_text(content: str | list[dict]) -> str:
    """The plain text of a message: its text parts joined (tool calls and outputs left out)."""
    return "".join(p["text"] for p in content_parts(content) if p.get("type") == "text")


def validate_messages(messages: Any) -> None:
    """Check that ``messages`` is a well-formed conversation.

    Rules: a non-empty list of ``{"role", "content"}`` dicts; an optional system message
    first; then user and assistant turns alternate, starting with the user; content is a
    string, or (assistant only) a list of parts of types text, python or python_output.

    Raises:
        FoundryError: naming the first message that breaks a rule.
    """
    if not isinstance(messages, list) or not messages:
        raise FoundryError("'messages' must be a non-empty list")
    expect = "user"
    for i, m in enumerate(messages):
        where = f"message {i + 1}"
        if not isinstance(m, dict):
            raise FoundryError(f"{where} is not an object")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise FoundryError(f"{where} has role {role!r} (use system, user or assistant)")
        if role == "system":
            if i != 0:
                raise FoundryError(f"{where}: a system message may only come first")
            if not isinstance(content, str):
                raise FoundryError(f"{where}: system content must be a string")
            continue
        if role != expect:
            raise FoundryError(f"{where} is a {role} message but a {expect} message was expected "
                               "(user and assistant turns alternate, starting with the user)")
        expect = "assistant" if role == "user" else "user"
        if isinstance(content, str):
            continue
        if role == "user" or not isinstance(content, list):
            raise FoundryError(f"{where}: content must be a string" + (" or a list of parts" if role == "assistant" else ""))
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") not in PART_TYPES or not isinstance(part.get("text"), str):
                raise FoundryError(f"{where}, part {j + 1}: a part is {{\"type\": text|python|python_output, \"text\": str}}")
    if messages[-1]["role"] == "system":
        raise FoundryError("the conversation has only a system message")


def _merge_system(messages: list[dict]) -> list[dict]:
    if messages and messages[0]["role"] == "system":
        system = messages[0]["content"]
        rest = [dict(m) for m in messages[1:]]
        if rest:
            rest[0]["content"] = f"{system}\n\n{rest[0]['content']}" if system else rest[0]["content"]
        return rest
    return list(messages)


def render_conversation(tokenizer: Tokenizer, messages: list[dict], max_tokens: int | None = None
                        ) -> tuple[list[int], list[int]]:
    """Token ids of a conversation and the loss mask that trains only the assistant.

    The mask is 1 exactly on tokens the assistant produces: its text, its python blocks
    (markers included) and its ``<|assistant_end|>``; 0 on ``<|bos|>``, user turns,
    ``<|assistant_start|>`` and tool outputs (the engine writes those, the model must
    not learn to invent them).

    Args:
        tokenizer: a tokenizer with the chat special tokens.
        messages: a conversation (validated first).
        max_tokens: cut ids and mask to at most this many tokens.
    """
    validate_messages(messages)
    sp = chat_token_ids(tokenizer)
    ids: list[int] = [sp["bos"]]
    mask: list[int] = [0]

    def add(tokens: list[int], m: int) -> None:
        ids.extend(tokens)
        mask.extend([m] * len(tokens))

    for msg in _merge_system(messages):
        if msg["role"] == "user":
            add([sp["user_start"], *tokenizer.encode(msg["content"]), sp["user_end"]], 0)
            continue
        add([sp["assistant_start"]], 0)
        for part in content_parts(msg["content"]):
            text = tokenizer.encode(part["text"])
            if part["type"] == "text":
                add(text, 1)
            elif part["type"] == "python":
                add([sp["python_start"], *text, sp["python_end"]], 1)
            else:
                add([sp["output_start"], *text, sp["output_end"]], 0)
        add([sp["assistant_end"]], 1)
    if max_tokens is not None:
        ids, mask = ids[:max_tokens], mask[:max_tokens]
    return ids, mask


def render_prompt(tokenizer: Tokenizer, messages: list[dict]) -> list[int]:
    """The conversation so far followed by ``<|assistant_start|>``, for the engine to complete.

    ``messages`` ends with a user turn; a trailing assistant turn (say, the reference
    answer of an example) is dropped, so ``render_prompt(tok, example.messages)`` works.
    """
    if isinstance(messages, list) and messages and isinstance(messages[-1], dict) and messages[-1].get("role") == "assistant":
        messages = messages[:-1]
    validate_messages(messages)
    if messages[-1]["role"] != "user":
        raise FoundryError("a prompt must end with a user message")
    # A conversation that ends with a user turn renders with every token masked; reuse it.
    ids, _ = render_conversation(tokenizer, messages)
    return ids + [chat_token_ids(tokenizer)["assistant_start"]]


def read_conversations(path: str | Path) -> list[list[dict]]:
    """Read a ``.jsonl`` file with one ``{"messages": [...]}`` object per line.

    Blank lines are skipped. Every conversation is validated.

    Raises:
        FoundryError: ``FILE:LINE: reason`` for the first bad line (not JSON, no
            ``messages`` list, or a malformed conversation).
    """
    path = Path(path)
    if not path.is_file():
        raise FoundryError(f"conversation file not found: {path}")
    out: list[list[dict]] = []
    for n, obj in iter_jsonl(path):
        if not isinstance(obj, dict) or "messages" not in obj:
            raise FoundryError(f"{path}:{n}: expected an object with a 'messages' list")
        try:
            validate_messages(obj["messages"])
        except FoundryError as e:
            raise FoundryError(f"{path}:{n}: {e}") from None
        out.append(obj["messages"])
    if not out:
        raise FoundryError(f"{path} holds no conversations")
    return out


def write_conversations(path: str | Path, conversations: list[list[dict]]) -> None:
    """Write conversations as ``.jsonl`` (atomically), the format :func:`read_conversations` reads."""
    from ..utils.io import atomic_write_text

    atomic_write_text(path, "".join(json.dumps({"messages": c}, ensure_ascii=False) + "\n" for c in conversations))
