"""The one tokenizer protocol every part of llm-foundry talks to."""

from __future__ import annotations

import os
from typing import Protocol, Sequence, runtime_checkable


@runtime_checkable
class Tokenizer(Protocol):
    """Text <-> token ids.

    Implementations: :class:`ByteTokenizer`, :class:`CharTokenizer`, :class:`BPETokenizer`.
    """

    kind: str  # "byte", "char" or "bpe"; stored in tokenizer.json

    @property
    def vocab_size(self) -> int:
        """Number of ids, specials included."""

    @property
    def special_tokens(self) -> dict[str, int]:
        """Special token string -> id."""

    def encode(self, text: str, *, bos: bool = False, eos: bool = False) -> list[int]:
        """Ids for ``text``; special-token strings inside ``text`` are plain text."""

    def decode(self, ids: Sequence[int], *, skip_special: bool = True) -> str:
        """Text for ``ids``."""

    def encode_batch(self, texts: Sequence[str], *, bos: bool = False, eos: bool = False) -> list[list[int]]:
        """``encode`` over many texts."""

    def token_id(self, token: str) -> int | None:
        """The id of a special token, or None when this tokenizer lacks it."""

    def save(self, path: str | os.PathLike) -> None:
        """Write ``tokenizer.json`` atomically."""


class SpecialTokensMixin:
    """Shared helpers for tokenizers that keep a ``specials`` dict (string -> id)."""

    specials: dict[str, int]

    @property
    def special_tokens(self) -> dict[str, int]:
        return dict(self.specials)

    def token_id(self, token: str) -> int | None:
        return self.specials.get(token)

    @property
    def pad_id(self) -> int | None:
        from .special import PAD

        return self.specials.get(PAD)

    @property
    def bos_id(self) -> int | None:
        from .special import BOS

        return self.specials.get(BOS)

    @property
    def eos_id(self) -> int | None:
        from .special import EOS

        return self.specials.get(EOS)

    def _wrap(self, ids: list[int], bos: bool, eos: bool) -> list[int]:
        if bos and self.bos_id is not None:
            ids.insert(0, self.bos_id)
        if eos and self.eos_id is not None:
            ids.append(self.eos_id)
        return ids

    def encode_batch(self, texts: Sequence[str], *, bos: bool = False, eos: bool = False) -> list[list[int]]:
        return [self.encode(t, bos=bos, eos=eos) for t in texts]  # type: ignore[attr-defined]
