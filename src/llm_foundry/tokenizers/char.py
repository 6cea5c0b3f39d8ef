"""Growable character tokenizer.

It starts with PAD (id 0) and UNK (id 1) only and appends each new character it is
shown; an id, once given, never changes, so a model trained on it can keep growing
its vocabulary (see ``MiniLLM.resize_vocab``). Characters it has not seen encode to
UNK unless ``grow=True``.
"""

from __future__ import annotations

import os
from typing import Iterable, Sequence

from ..utils.errors import FoundryError
from ..utils.io import atomic_write_json
from .base import SpecialTokensMixin
from .special import PAD, UNK


class CharTokenizer(SpecialTokensMixin):
    """One id per Unicode character, grown on demand."""

    kind = "char"

    def __init__(self, tokens: Iterable[str] = (), special_tokens: Sequence[str] = ()):
        self.itos: list[str] = []
        self.stoi: dict[str, int] = {}
        self.specials: dict[str, int] = {}
        for tok in (PAD, UNK, *special_tokens):
            self.add_special_token(tok)
        self.add_chars(tokens)

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    @property
    def unk_id(self) -> int:
        return self.specials[UNK]

    def add_special_token(self, token: str) -> int:
        """Reserve ``token`` as a special (appended, or its existing id)."""
        if token in self.specials:
            return self.specials[token]
        self.specials[token] = len(self.itos)
        self.itos.append(token)
        return self.specials[token]

    def add_chars(self, text: Iterable[str]) -> list[str]:
        """Append every character of ``text`` not seen before; returns the new ones."""
        new: list[str] = []
        for ch in text:
            if ch not in self.stoi:
                if len(ch) != 1:
                    raise FoundryError(f"char tokenizer entries must be single characters, got {ch!r}")
                self.stoi[ch] = len(self.itos)
                self.itos.append(ch)
                new.append(ch)
        return new

    def encode(self, text: str, *, bos: bool = False, eos: bool = False, grow: bool = False) -> list[int]:
        if grow:
            self.add_chars(text)
        unk = self.unk_id
        return self._wrap([self.stoi.get(ch, unk) for ch in text], bos, eos)

    def decode(self, ids: Sequence[int], *, skip_special: bool = True) -> str:
        out = []
        n = len(self.itos)
        special_ids = set(self.specials.values())
        for i in ids:
            i = int(i)
            if not 0 <= i < n:
                continue
            if i in special_ids:
                if skip_special:
                    continue
            out.append(self.itos[i])
        return "".join(out)

    def to_dict(self) -> dict:
        return {
            "llm_foundry_tokenizer": self.kind,
            "version": 1,
            "special_tokens": list(self.specials),
            "tokens": self.itos,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "CharTokenizer":
        tokens, specials = data.get("tokens"), data.get("special_tokens")
        if not isinstance(tokens, list) or not isinstance(specials, list) or not all(isinstance(t, str) for t in tokens):
            raise FoundryError("char tokenizer file is malformed (needs 'tokens' and 'special_tokens' lists)")
        tok = cls.__new__(cls)
        tok.itos, tok.stoi, tok.specials = [], {}, {}
        special_set = set(specials)
        if PAD not in special_set or UNK not in special_set:
            raise FoundryError("char tokenizer file lacks the PAD/UNK tokens")
        # Rebuild in stored order so every id stays exactly what it was.
        for t in tokens:
            if t in special_set:
                tok.specials[t] = len(tok.itos)
                tok.itos.append(t)
            else:
                if t in tok.stoi or len(t) != 1:
                    raise FoundryError(f"char tokenizer file has a bad or repeated entry {t!r}")
                tok.stoi[t] = len(tok.itos)
                tok.itos.append(t)
        return tok

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_json(path, self.to_dict())
