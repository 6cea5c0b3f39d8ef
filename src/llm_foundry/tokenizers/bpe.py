"""Byte-level BPE, trained and run by Hugging Face ``tokenizers`` (Rust).

Byte-level means the base alphabet is the 256 bytes, so no text is ever unknown
and decoding is exact. Special tokens (chat markers) are reserved first, at ids
0..k-1. The file format is Hugging Face's own ``tokenizer.json``, so an exported
model folder works with ``transformers`` unchanged.
"""

from __future__ import annotations

import os
from typing import Iterable, Iterator, Sequence

from ..utils.errors import FoundryError
from ..utils.io import atomic_write_text
from .base import SpecialTokensMixin
from .special import DEFAULT_SPECIAL_TOKENS


class BPETokenizer(SpecialTokensMixin):
    """A trained byte-level BPE."""

    kind = "bpe"

    def __init__(self, hf_tokenizer):
        # Like the byte and char tokenizers, treat "<|eos|>" typed inside a text as plain
        # text: only code that builds ids on purpose (chat rendering) emits special ids.
        hf_tokenizer.encode_special_tokens = True
        self._tk = hf_tokenizer
        self.specials = {}
        for tok in DEFAULT_SPECIAL_TOKENS:
            i = hf_tokenizer.token_to_id(tok)
            if i is not None:
                self.specials[tok] = i
        self._special_ids = set(self.specials.values())

    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        vocab_size: int,
        special_tokens: Sequence[str] = DEFAULT_SPECIAL_TOKENS,
        min_frequency: int = 2,
    ) -> "BPETokenizer":
        """Learn merges from ``texts`` until the vocabulary holds ``vocab_size`` ids.

        Args:
            texts: an iterable of documents (streamed; need not fit in memory).
            vocab_size: total size, including the 256 bytes and the specials.
            special_tokens: reserved tokens (ids 0..k-1).
            min_frequency: a pair must occur this often to be merged.
        """
        from tokenizers import Tokenizer as HFTokenizer, decoders, models, pre_tokenizers, trainers

        floor = 256 + len(special_tokens)
        if vocab_size < floor:
            raise FoundryError(f"BPE vocab size must be at least {floor} (256 bytes + {len(special_tokens)} specials), got {vocab_size}")
        tk = HFTokenizer(models.BPE())
        tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tk.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=list(special_tokens),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tk.train_from_iterator(_non_empty(texts), trainer=trainer)
        return cls(tk)

    @property
    def vocab_size(self) -> int:
        return self._tk.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, *, bos: bool = False, eos: bool = False) -> list[int]:
        return self._wrap(list(self._tk.encode(text, add_special_tokens=False).ids), bos, eos)

    def encode_batch(self, texts: Sequence[str], *, bos: bool = False, eos: bool = False) -> list[list[int]]:
        # The Rust side encodes a batch in parallel.
        encs = self._tk.encode_batch(list(texts), add_special_tokens=False)
        return [self._wrap(list(e.ids), bos, eos) for e in encs]

    def decode(self, ids: Sequence[int], *, skip_special: bool = True) -> str:
        return self._tk.decode([int(i) for i in ids], skip_special_tokens=skip_special)

    def to_json(self) -> str:
        return self._tk.to_str()

    @classmethod
    def from_json(cls, text: str) -> "BPETokenizer":
        from tokenizers import Tokenizer as HFTokenizer

        try:
            return cls(HFTokenizer.from_str(text))
        except Exception as e:
            raise FoundryError(f"BPE tokenizer file could not be read: {str(e).splitlines()[0]}") from None

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_text(path, self.to_json())


def _non_empty(texts: Iterable[str]) -> Iterator[str]:
    for t in texts:
        if t:
            yield t
