"""A byte-level BPE tokenizer in plain Python: trainer, encoder and decoder.

Our library's BPETokenizer (src/llm_foundry/tokenizers/bpe.py) hands this work to the Rust
code of Hugging Face `tokenizers`. Here you write the same algorithm yourself:

    text --split_text--> chunks --UTF-8--> bytes 0..255 --merges--> token ids
    token ids --vocab--> bytes --UTF-8--> text

Ids 0..255 are the 256 byte values (so no text is ever unknown); the merge learned k-th
gets id 256 + k. ``merges`` maps a pair of ids to the id of the token that replaces it,
``vocab`` maps every id to the bytes it stands for.

Run the tests with:  foundry lab test 2
"""

from __future__ import annotations

import re
from collections import Counter

# The pre-tokenizer: text is cut into chunks (a word with its leading space, a number, a
# run of punctuation, whitespace) and BPE never merges across two chunks. This is the
# GPT-2 pattern our BPETokenizer uses (`pre_tokenizers.ByteLevel(use_regex=True)`), written
# for Python's `re`: [^\W\d_] is "a letter", \d "a digit".
SPLIT_PATTERN = re.compile(r"""'(?:[sdmt]|ll|ve|re)| ?[^\W\d_]+| ?\d+| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+""")


def split_text(text: str) -> list[str]:
    """The chunks of ``text``; joined back they give ``text`` exactly."""
    return SPLIT_PATTERN.findall(text)


def get_stats(ids: list[int], counts: dict[tuple[int, int], int] | None = None,
              weight: int = 1) -> dict[tuple[int, int], int]:
    """Count the adjacent pairs of ``ids``.

    Args:
        ids: a sequence of token ids.
        counts: a dict to add to (a new one when None), so one dict can count many chunks.
        weight: how much each occurrence adds (a chunk seen 5 times in the text counts 5).

    Returns:
        ``counts``: pair -> number of occurrences. Example: ``get_stats([1, 2, 3, 1, 2])``
        is ``{(1, 2): 2, (2, 3): 1, (3, 1): 1}``.
    """
    # BEGIN SOLUTION stats
    counts = {} if counts is None else counts
    for pair in zip(ids, ids[1:]):
        counts[pair] = counts.get(pair, 0) + weight
    return counts
    # END SOLUTION


def merge(ids: list[int], pair: tuple[int, int], idx: int) -> list[int]:
    """A new list: every occurrence of ``pair`` in ``ids``, left to right, replaced by ``idx``.

    Example: ``merge([1, 2, 3, 1, 2], (1, 2), 256)`` is ``[256, 3, 256]``;
    ``merge([7, 7, 7], (7, 7), 256)`` is ``[256, 7]`` (the pairs overlap: the first wins).
    """
    # BEGIN SOLUTION merge
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            out.append(idx)
            i += 2  # both parts are used up: an overlapping pair cannot use the second again
        else:
            out.append(ids[i])
            i += 1
    return out
    # END SOLUTION


def train(text: str, vocab_size: int) -> dict[tuple[int, int], int]:
    """Learn ``vocab_size - 256`` merges from ``text`` (fewer if no pair is left to merge).

    Each round counts the adjacent pairs over all chunks, merges the most frequent one into
    a new id (256, 257, ...), and replaces it everywhere. A tie is broken by the smallest
    pair, ``min`` of the tied pairs, as the Rust trainer behind our BPETokenizer does, so
    the result never depends on the order in which a dict was filled.

    Returns:
        merges: ``{(a, b): new_id}`` in the order they were learned.
    """
    if vocab_size < 256:
        raise ValueError(f"vocab_size must be at least 256 (the bytes), got {vocab_size}")
    # BEGIN SOLUTION train
    # STUB: merges: dict[tuple[int, int], int] = {}
    # STUB: # 1. chunks = Counter(split_text(text)): count each distinct chunk once
    # STUB: # 2. each chunk as its list of UTF-8 bytes, with its count
    # STUB: # 3. for idx in range(256, vocab_size): get_stats over all chunks (weighted),
    # STUB: #    pick the best pair (a tie: the smallest), record it, merge it in every chunk
    # STUB: raise NotImplementedError("train")
    # A text repeats its words: work on each distinct chunk once, weighted by its count.
    chunks = [(list(chunk.encode("utf-8")), n) for chunk, n in Counter(split_text(text)).items()]
    merges: dict[tuple[int, int], int] = {}
    for idx in range(256, vocab_size):
        stats: dict[tuple[int, int], int] = {}
        for ids, n in chunks:
            get_stats(ids, stats, n)
        if not stats:
            break  # every chunk is a single token: nothing left to merge
        best = max(stats.values())
        pair = min(p for p, c in stats.items() if c == best)  # a tie: the smallest pair wins
        merges[pair] = idx
        chunks = [(merge(ids, pair, idx), n) for ids, n in chunks]
    return merges
    # END SOLUTION


def build_vocab(merges: dict[tuple[int, int], int]) -> dict[int, bytes]:
    """Every id's bytes: ids 0..255 are the bytes themselves, a merged id the bytes of its pair.

    ``merges`` may come in any order (e.g. read back from a JSON file).
    """
    # BEGIN SOLUTION vocab
    vocab = {i: bytes([i]) for i in range(256)}
    # By id: a token is built from tokens made before it, so theirs must already be there.
    for (a, b), idx in sorted(merges.items(), key=lambda item: item[1]):
        vocab[idx] = vocab[a] + vocab[b]
    return vocab
    # END SOLUTION


def encode(text: str, merges: dict[tuple[int, int], int]) -> list[int]:
    """The token ids of ``text``.

    Each chunk starts as its UTF-8 bytes; then, while some adjacent pair has a merge, the
    pair whose merge was learned EARLIEST (the lowest new id) is merged, exactly the order
    in which training made its tokens.
    """
    # BEGIN SOLUTION encode
    out: list[int] = []
    for chunk in split_text(text):
        ids = list(chunk.encode("utf-8"))
        while len(ids) >= 2:
            stats = get_stats(ids)
            pair = min(stats, key=lambda p: merges.get(p, float("inf")))
            if pair not in merges:
                break  # no pair left that training ever merged
            ids = merge(ids, pair, merges[pair])
        out.extend(ids)
    return out
    # END SOLUTION


def decode(ids: list[int], vocab: dict[int, bytes]) -> str:
    """The text of ``ids``.

    The bytes of all tokens are joined first and decoded once: one character's UTF-8 bytes
    may be spread over several tokens. Bytes that are not valid UTF-8 (a cut-off character)
    become U+FFFD instead of an exception.
    """
    # BEGIN SOLUTION decode
    return b"".join(vocab[i] for i in ids).decode("utf-8", errors="replace")
    # END SOLUTION
