"""Hidden tests of module 2: texts and cases the visible tests do not show, so that an answer
shaped to the visible examples does not pass."""

import random
import sys
from pathlib import Path

from bpe import build_vocab, decode, encode, get_stats, merge, train
from llm_foundry.lab.testing import check_equal

# The visible tests' helpers, next to this file in the run folder's tests/, whatever pytest's import mode.
sys.path.insert(0, str(Path(__file__).parent))
from test_bpe import CHINESE, EMOJI, check_ids, english_corpus  # noqa: E402


def test_train_exact_merges_on_words():
    got = train("low low low lower lowest newer newer wider", 266)
    want = {(108, 111): 256, (256, 119): 257, (32, 257): 258, (101, 114): 259, (32, 110): 260,
            (101, 119): 261, (260, 261): 262, (262, 259): 263, (32, 119): 264, (100, 259): 265}
    check_equal('train("low low low lower lowest newer newer wider", 266)', got, want, where=train,
                hint="count pairs inside chunks, weight each chunk by how often it occurs, a tie goes to the smallest pair")


def test_train_exact_merges_on_chinese():
    got = train("你好，世界。你好，朋友。", 262)
    want = {(128, 130): 256, (160, 229): 257, (165, 189): 258, (188, 140): 259, (189, 257): 260, (227, 256): 261}
    check_equal('train("你好，世界。你好，朋友。", 262)', got, want, where=train,
                hint="train on the UTF-8 bytes of each chunk: a Chinese character is 3 bytes, merged like any others")
    check_equal('encode("你好朋友", merges)', encode("你好朋友", got), [228, 260, 258, 230, 156, 139, 229, 143, 139],
                where=encode)


def test_merge_leaves_its_input_alone():
    ids = [5, 6, 5, 6]
    merge(ids, (5, 6), 300)
    check_equal("ids after merge(ids, (5, 6), 300)", ids, [5, 6, 5, 6], where=merge,
                hint="return a new list; the caller's list must not change")
    check_equal("get_stats([])", get_stats([]), {}, where=get_stats)


def test_round_trip_of_random_text():
    rng = random.Random(1234)
    alphabet = list("abcdefghij ABC  \n\t\r.,!?'_-0123") + list("中文字节分词") + ["🦜", "👍🏽", "é", "\u0301", "\x00", "\u200d"]
    corpus = "".join(rng.choice(alphabet) for _ in range(3000))
    merges = train(corpus, 320)
    vocab = build_vocab(merges)
    for k in range(20):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 80)))
        ids = encode(text, merges)
        check_ids(f"encode(random text #{k}: {text!r})", ids, merges)
        check_equal(f"decode(encode(random text #{k}: {text!r}))", decode(ids, vocab), text, where=decode)


def test_chinese_compression_against_the_rust_bpe():
    from llm_foundry.tokenizers import BPETokenizer
    from llm_foundry.tokenizers.special import DEFAULT_SPECIAL_TOKENS

    train_text = english_corpus(20, 3) + CHINESE * 4 + EMOJI * 2
    held_out = CHINESE[10:] + english_corpus(23, 1)[:3000]
    merges = train(train_text, 330)
    ours = BPETokenizer.train([train_text], 330 + len(DEFAULT_SPECIAL_TOKENS))
    ids = encode(held_out, merges)
    check_ids("encode(Chinese and English text)", ids, merges)
    mine, theirs = len(ids), len(ours.encode(held_out))
    print(f"Chinese and English held-out text: yours {mine} tokens, ours {theirs}")
    assert mine <= 1.05 * theirs, f"your tokenizer needs {mine / theirs:.2f}x the tokens of ours on Chinese and English text"
    check_equal("decode(encode(Chinese and English text))", decode(encode(held_out, merges), build_vocab(merges)),
                held_out, where=decode)
