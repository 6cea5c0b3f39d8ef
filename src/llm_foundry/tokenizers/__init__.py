"""Tokenizers behind one protocol: byte (lossless UTF-8), growable char, and BPE."""

from .base import Tokenizer
from .special import CHAT_SPECIAL_TOKENS, BOS, EOS, PAD, UNK
from .byte import ByteTokenizer
from .char import CharTokenizer
from .bpe import BPETokenizer
from .factory import build_tokenizer, load_tokenizer

__all__ = [
    "Tokenizer",
    "ByteTokenizer",
    "CharTokenizer",
    "BPETokenizer",
    "build_tokenizer",
    "load_tokenizer",
    "CHAT_SPECIAL_TOKENS",
    "BOS",
    "EOS",
    "PAD",
    "UNK",
]
