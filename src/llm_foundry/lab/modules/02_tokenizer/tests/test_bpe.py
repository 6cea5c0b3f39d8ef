"""Tests of your byte-level BPE (bpe.py): the pieces, the classic bugs, the round trip, and a
comparison with our Rust-backed BPETokenizer (src/llm_foundry/tokenizers/bpe.py).

Run them with:  foundry lab test 2
"""

import functools
import time

import pytest

from bpe import build_vocab, decode, encode, get_stats, merge, train
from llm_foundry.lab.testing import check_equal

# A few lines of Chinese, English and emoji, written for these tests.
CHINESE = ("分词器把文字切成模型能读的小块。字节级的 BPE 从二百五十六个字节出发，"
           "一次又一次地把最常见的相邻两块合并成新的一块，直到词表装满。"
           "同样的句子，合并得越多，需要的 token 就越少，模型一次能看到的文字也就越长。")
EMOJI = "emoji: 🚀🔥 family 👨‍👩‍👧 flag 🇨🇳 parrot 🦜!"
ENGLISH = "The tokenizer's merges don't cross word boundaries: it's 2 chunks, not one.\n\tIndented line.\r\n"
SAMPLES = {"english": ENGLISH, "chinese": CHINESE, "emoji": EMOJI, "mixed": f"{ENGLISH} {CHINESE} {EMOJI}"}


def english_corpus(first: int, count: int) -> str:
    """Topics of Python's reference documentation: English text every Python install has."""
    from pydoc_data.topics import topics

    return "".join(topics[k] for k in sorted(topics)[first:first + count])


def check_ids(call: str, ids, merges: dict) -> None:
    """``ids`` is a list of ints, each an id of the vocabulary (0..255 bytes, then one per merge)."""
    if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids):
        raise AssertionError(f"{call} (your bpe.py, encode) returned {type(ids).__name__} {str(ids)[:60]!r}: "
                             f"expected a list of int token ids")
    outside = sorted({i for i in ids if not 0 <= i < 256 + len(merges)})
    assert not outside, (f"{call} gave ids that are not in the vocabulary: {outside[:5]}: byte fallback means every "
                         f"character starts as its UTF-8 bytes (chunk.encode('utf-8'), ids 0..255), never ord(character)")


# ----------------------------------------------------------------------------- the pieces


def test_get_stats_counts_adjacent_pairs():
    check_equal("get_stats([1, 2, 3, 1, 2])", get_stats([1, 2, 3, 1, 2]), {(1, 2): 2, (2, 3): 1, (3, 1): 1},
                where=get_stats)
    counts = {(1, 2): 10}
    got = get_stats([1, 2, 5], counts, weight=3)
    check_equal("get_stats([1, 2, 5], counts={(1, 2): 10}, weight=3)", got, {(1, 2): 13, (2, 5): 3}, where=get_stats,
                hint="add to the dict you are given (and return it); each pair adds `weight`")
    check_equal("get_stats([1, 2, 5], counts, weight=3): the dict passed in", counts, {(1, 2): 13, (2, 5): 3},
                where=get_stats, hint="update `counts` itself, so that one dict can count every chunk")


def test_merge_replaces_every_occurrence():
    check_equal("merge([1, 2, 3, 1, 2], (1, 2), 256)", merge([1, 2, 3, 1, 2], (1, 2), 256), [256, 3, 256], where=merge)
    check_equal("merge([1, 3, 2], (1, 2), 256)", merge([1, 3, 2], (1, 2), 256), [1, 3, 2], where=merge,
                hint="only ADJACENT pairs merge")
    check_equal("merge([1], (1, 2), 256)", merge([1], (1, 2), 256), [1], where=merge)


def test_merge_overlapping_pairs():
    check_equal("merge([7, 7, 7], (7, 7), 256)", merge([7, 7, 7], (7, 7), 256), [256, 7], where=merge,
                hint="in 7 7 7 the pairs overlap: go left to right, and once a pair is merged skip both of its parts")
    check_equal("merge([7, 7, 7, 7], (7, 7), 256)", merge([7, 7, 7, 7], (7, 7), 256), [256, 256], where=merge,
                hint="in 7 7 7 7 the pairs overlap: go left to right, and once a pair is merged skip both of its parts")


# ----------------------------------------------------------------------------- training


def test_train_learns_the_most_frequent_pairs():
    # The textbook example: aa (4 times) first, then ab, then the two new tokens together.
    got = train("aaabdaaabac", 259)
    check_equal('train("aaabdaaabac", 259)', got, {(97, 97): 256, (97, 98): 257, (256, 257): 258}, where=train,
                hint="round 2 is a tie between (97, 98) and (256, 97), both seen twice: the smallest pair wins")


def test_train_breaks_ties_by_the_smallest_pair():
    # d c a b: three pairs, each seen once. Whichever pair a dict meets first must not matter.
    check_equal('train("dcab", 257)', train("dcab", 257), {(97, 98): 256}, where=train,
                hint="(100, 99), (99, 97) and (97, 98) tie; a tie goes to the smallest pair, min() of the tied "
                     "pairs, not to the first one max() meets")


def test_train_does_not_merge_across_chunks():
    # Chunks "a", " b", " a", " b", ...: the pair (a, space) never counts, and after two merges
    # every chunk is one token, so training stops early.
    got = train("a b a b a b", 300)
    check_equal('train("a b a b a b", 300)', got, {(32, 98): 256, (32, 97): 257}, where=train,
                hint="count pairs inside each chunk of split_text(text) only; when no pair is left, stop early")


# ----------------------------------------------------------------------------- vocabulary, encode, decode


def test_build_vocab_in_any_order():
    merges = {(97, 97): 256, (97, 98): 257, (256, 257): 258}
    shuffled = {(256, 257): 258, (97, 98): 257, (97, 97): 256}  # e.g. read back from a JSON file
    for name, m in (("merges", merges), ("the same merges in another order", shuffled)):
        try:
            vocab = build_vocab(m)
        except KeyError as e:
            raise AssertionError(f"build_vocab({name}) raised KeyError {e}: merges may come in any order; "
                                 "build the tokens by id, so a token's two parts exist before it") from None
        check_equal(f"build_vocab({name})[258]", vocab.get(258) if isinstance(vocab, dict) else vocab, b"aaab",
                    where=build_vocab, hint="merges may come in any order; the bytes of 258 are those of 256 then 257")
        check_equal(f"len(build_vocab({name}))", len(vocab), 259, where=build_vocab,
                    hint="ids 0..255 are the single bytes, then one id per merge")
        check_equal(f"build_vocab({name})[65]", vocab[65], b"A", where=build_vocab)


def test_encode_applies_the_earliest_merge_first():
    merges = {(97, 98): 256, (98, 99): 257}
    # a b c b c: (b, c) is the most frequent pair, but (a, b) was learned first.
    check_equal('encode("abcbc", {(97, 98): 256, (98, 99): 257})', encode("abcbc", merges), [256, 99, 257],
                where=encode, hint="merge the pair whose merge was learned earliest (the lowest id), not the pair "
                                   "that is most frequent in this text: that is the order training made them")
    check_equal('encode("cab", {})', encode("cab", {}), [99, 97, 98], where=encode,
                hint="with no merges the ids are the UTF-8 bytes")


def test_decode_joins_bytes_before_decoding():
    vocab = build_vocab({})
    data = "中".encode("utf-8")  # three bytes, three tokens
    check_equal("decode([228, 184, 173], vocab)", decode(list(data), vocab), "中", where=decode,
                hint="join the bytes of all tokens, then decode once: one character's bytes can be split over tokens")
    try:
        got = decode(list(data[:2]), vocab)
    except UnicodeDecodeError as e:
        raise AssertionError(f"decode([228, 184], vocab) raised UnicodeDecodeError ({e.reason}): a cut-off character "
                             "must become '\\ufffd' (errors=\"replace\"), as a model can stop mid-character") from None
    check_equal("decode([228, 184], vocab)", got, "\ufffd", where=decode,
                hint='bytes that are not valid UTF-8 become U+FFFD: decode(..., errors="replace")')


@functools.cache
def mixed_merges() -> dict:
    # (called inside the tests, not in a fixture, so that an error in train is that test's failure)
    return train(english_corpus(0, 4) + CHINESE * 3 + EMOJI * 3, 356)


@pytest.mark.parametrize("name", list(SAMPLES))
def test_round_trip_is_exact(name):
    text = SAMPLES[name]
    merges = mixed_merges()
    ids = encode(text, merges)
    check_ids(f"encode({name} text)", ids, merges)
    check_equal(f"decode(encode({name} text))", decode(ids, build_vocab(merges)), text, where=decode,
                hint="join the bytes of all tokens, then decode once: one character's bytes can be split over tokens")
    assert len(ids) < len(text.encode("utf-8")), (
        f"encode({name} text) gave {len(ids)} ids for {len(text.encode('utf-8'))} bytes: the merges should compress it")


def test_unseen_bytes_fall_back_to_bytes():
    merges = train(english_corpus(0, 2), 300)  # English only: no Chinese, no emoji
    vocab = build_vocab(merges)
    text = CHINESE[:12] + EMOJI
    ids = encode(text, merges)
    check_ids("encode(Chinese and emoji, merges learned from English)", ids, merges)
    check_equal("decode(encode(Chinese and emoji text never seen in training))", decode(ids, vocab), text,
                where=decode)


# ----------------------------------------------------------------------------- against our library


def test_compression_and_speed_against_the_rust_bpe():
    """Same training text, same vocabulary size: your token count on held-out text is within
    5% of our BPETokenizer's (both split text the same way and merge the most frequent pair;
    small differences come from ties and the Rust side's own id order). The speed is printed,
    not tested."""
    from llm_foundry.tokenizers import BPETokenizer
    from llm_foundry.tokenizers.special import DEFAULT_SPECIAL_TOKENS

    train_text, held_out = english_corpus(0, 10), english_corpus(10, 4)
    t0 = time.perf_counter()
    merges = train(train_text, 356)
    t1 = time.perf_counter()
    ids = encode(held_out, merges)
    t2 = time.perf_counter()
    check_ids("encode(held-out text)", ids, merges)
    # Our tokenizer reserves its special tokens on top of the 256 bytes and the merges.
    ours = BPETokenizer.train([train_text], 356 + len(DEFAULT_SPECIAL_TOKENS))
    t3 = time.perf_counter()
    theirs = ours.encode(held_out)
    t4 = time.perf_counter()
    n = len(held_out.encode("utf-8"))
    print(f"held-out text: {n:,} bytes")
    print(f"  your Python BPE : {len(ids):6,} tokens ({n / max(len(ids), 1):.2f} bytes/token), "
          f"train {t1 - t0:.3f} s, encode {t2 - t1:.3f} s")
    print(f"  our Rust BPE    : {len(theirs):6,} tokens ({n / len(theirs):.2f} bytes/token), "
          f"train {t3 - t2:.3f} s, encode {t4 - t3:.3f} s")
    print(f"  the Rust version trains {(t1 - t0) / max(t3 - t2, 1e-9):.0f}x and encodes "
          f"{(t2 - t1) / max(t4 - t3, 1e-9):.0f}x faster")
    check_equal("len(merges) after train(text, 356)", len(merges), 100, where=train)
    ratio = len(ids) / len(theirs)
    assert ratio <= 1.05, (f"your tokenizer needs {len(ids)} tokens for the held-out text, ours {len(theirs)}: "
                           f"{ratio:.2f}x as many (at most 1.05x expected). Check the merge rule: most frequent "
                           f"pair, counted inside chunks, applied earliest-first when encoding")
    check_equal("decode(encode(held-out text))", decode(ids, build_vocab(merges)), held_out, where=decode)
