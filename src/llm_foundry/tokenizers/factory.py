"""Build a tokenizer by name, or load one from ``tokenizer.json``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

from ..utils.errors import FoundryError
from .base import Tokenizer
from .bpe import BPETokenizer
from .byte import ByteTokenizer
from .char import CharTokenizer

KINDS = ("char", "byte", "bpe")


def build_tokenizer(kind: str, texts: Iterable[str] = (), vocab_size: int | None = None) -> Tokenizer:
    """A new tokenizer of ``kind`` fitted to ``texts`` (char: its characters; bpe: merges)."""
    if kind == "byte":
        return ByteTokenizer()
    if kind == "char":
        tok = CharTokenizer()
        for t in texts:
            tok.add_chars(t)
        return tok
    if kind == "bpe":
        return BPETokenizer.train(texts, vocab_size or 4096)
    raise FoundryError(f"unknown tokenizer '{kind}' (use {', '.join(KINDS)})")


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Load a tokenizer from a ``tokenizer.json`` file or a folder that holds one."""
    path = Path(path)
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise FoundryError(f"tokenizer file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise FoundryError(f"tokenizer file is corrupt (not UTF-8 JSON): {path}") from None
    if not isinstance(data, dict):
        raise FoundryError(f"tokenizer file is not a tokenizer: {path}")
    kind = data.get("llm_foundry_tokenizer")
    if kind == "byte":
        return ByteTokenizer.from_dict(data)
    if kind == "char":
        return CharTokenizer.from_dict(data)
    if isinstance(data.get("model"), dict) and data["model"].get("type") == "BPE":
        return BPETokenizer.from_json(text)
    raise FoundryError(f"tokenizer file is not a tokenizer llm-foundry knows: {path}")
