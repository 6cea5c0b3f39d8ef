"""Byte-level tokenizer: ids 0-255 are UTF-8 bytes, specials follow.

Lossless for any Unicode text (Chinese, emoji, mixed scripts) with no training and
no unknown token; the price is ~3 ids per Chinese character.
"""

from __future__ import annotations

import os
from typing import Sequence

from ..utils.errors import FoundryError
from ..utils.io import atomic_write_json
from .base import SpecialTokensMixin
from .special import DEFAULT_SPECIAL_TOKENS


class ByteTokenizer(SpecialTokensMixin):
    """UTF-8 bytes plus reserved special tokens (ids 256 and up)."""

    kind = "byte"

    def __init__(self, special_tokens: Sequence[str] = DEFAULT_SPECIAL_TOKENS):
        self.specials = {tok: 256 + i for i, tok in enumerate(special_tokens)}
        self._special_by_id = {i: t for t, i in self.specials.items()}

    @property
    def vocab_size(self) -> int:
        return 256 + len(self.specials)

    def encode(self, text: str, *, bos: bool = False, eos: bool = False) -> list[int]:
        return self._wrap(list(text.encode("utf-8")), bos, eos)

    def decode(self, ids: Sequence[int], *, skip_special: bool = True) -> str:
        # Group runs of byte ids so multi-byte characters decode together; a cut-off
        # character (mid-stream) becomes U+FFFD rather than an exception.
        out: list[str] = []
        run = bytearray()
        for i in ids:
            i = int(i)
            if 0 <= i < 256:
                run.append(i)
                continue
            if run:
                out.append(run.decode("utf-8", errors="replace"))
                run.clear()
            if not skip_special and i in self._special_by_id:
                out.append(self._special_by_id[i])
        if run:
            out.append(run.decode("utf-8", errors="replace"))
        return "".join(out)

    def to_dict(self) -> dict:
        return {"llm_foundry_tokenizer": self.kind, "version": 1, "special_tokens": list(self.specials)}

    @classmethod
    def from_dict(cls, data: dict) -> "ByteTokenizer":
        specials = data.get("special_tokens", DEFAULT_SPECIAL_TOKENS)
        if not isinstance(specials, list) or not all(isinstance(s, str) for s in specials):
            raise FoundryError("byte tokenizer file has a malformed special_tokens list")
        return cls(specials)

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_json(path, self.to_dict())
