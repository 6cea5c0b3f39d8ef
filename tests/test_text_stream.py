"""The one incremental text decoder (TextStream) and the chat reply decoder on top of it, with the byte tokenizer.

Byte ids are one UTF-8 byte each, so a Chinese character is three tokens and an emoji four:
exactly the splits a streaming client must never see as U+FFFD.
"""

from __future__ import annotations

import pytest

from llm_foundry.inference.text_stream import ReplyDecoder, TextStream
from llm_foundry.tokenizers import ByteTokenizer
from llm_foundry.tokenizers.special import (ASSISTANT_END, CHAT_TERMINATORS, OUTPUT_END, OUTPUT_START, PAD,
                                            PYTHON_END, PYTHON_START, USER_START)

TOK = ByteTokenizer()
SP = {name: TOK.token_id(name) for name in (ASSISTANT_END, USER_START, PYTHON_START, PYTHON_END, OUTPUT_START,
                                            OUTPUT_END, PAD)}


def feed(stream: TextStream, text: str, *extra_ids: int) -> list[str]:
    """Push ``text`` byte by byte (then ``extra_ids``) and flush; the pieces released, empty ones dropped."""
    pieces = [stream.push(i) for i in [*TOK.encode(text), *extra_ids]] + [stream.flush()]
    return [p for p in pieces if p]


def test_split_chinese_characters_are_held_until_complete():
    stream = TextStream(TOK)
    pieces = feed(stream, "你好，世界")
    assert pieces == ["你", "好", "，", "世", "界"]  # one piece per character, never a half
    assert stream.text == "你好，世界"


def test_emoji_and_mixed_scripts():
    pieces = feed(TextStream(TOK), "a😀b 🎉中")
    assert "".join(pieces) == "a😀b 🎉中" and "😀" in pieces and "\ufffd" not in "".join(pieces)


def test_incomplete_character_at_the_end_is_released_by_flush():
    stream = TextStream(TOK)
    assert [stream.push(i) for i in "中".encode()[:2]] == ["", ""]
    assert stream.flush() == "\ufffd"  # the stream ended inside a character: shown, not lost


def test_stop_string_across_pieces_is_never_emitted():
    stream = TextStream(TOK, stop=["END"])
    pieces = feed(stream, "abcENxyzENDmore")
    # "EN" is held until "x" shows it is text; the second "EN" turns out to be the stop string.
    assert pieces == ["a", "b", "c", "ENx", "y", "z"] and stream.stopped and stream.text == "abcENxyz"
    assert stream.push(TOK.encode("z")[0]) == "" and stream.flush() == ""  # nothing after a stop


def test_a_tail_that_may_start_a_stop_string_is_held():
    stream = TextStream(TOK, stop=["\n\n"])
    out = [stream.push(i) for i in TOK.encode("line\n")]
    assert "".join(out) == "line"  # the "\n" may be the start of "\n\n"
    assert stream.push(TOK.encode("x")[0]) == "\nx"  # it was not


def test_stop_string_at_the_very_end():
    stream = TextStream(TOK, stop=["好"])
    assert "".join(feed(stream, "你好")) == "你" and stream.stopped
    # The stream ends while a stop string is still forming: the held text was not one, so it is released.
    stream = TextStream(TOK, stop=["STOP"])
    assert "".join(feed(stream, "go ST")) == "go ST" and not stream.stopped


def test_earliest_of_several_stop_strings_and_multibyte_stop():
    stream = TextStream(TOK, stop=["世界", "，"])
    assert "".join(feed(stream, "你好，世界")) == "你好"
    stream = TextStream(TOK, stop=["b", "abc"])  # "a" is held for "abc"; "b" stops first
    assert "".join(feed(stream, "xabd")) == "xa"


def test_special_tokens_skipped_or_kept():
    ids = [*TOK.encode("hi"), SP[ASSISTANT_END], *TOK.encode("!")]
    assert "".join(TextStream(TOK).push(i) for i in ids) == "hi!"
    kept = TextStream(TOK, skip_special=False)
    assert "".join(kept.push(i) for i in ids) + kept.flush() == "hi<|assistant_end|>!"


def test_reply_decoder_splits_text_and_tool_blocks():
    d = ReplyDecoder(TOK)
    ids = [*TOK.encode("a"), SP[PYTHON_START], *TOK.encode("2+2"), SP[PYTHON_END], SP[OUTPUT_START],
           *TOK.encode("4"), SP[OUTPUT_END], *TOK.encode("好"), SP[ASSISTANT_END], *TOK.encode("never")]
    events = [e for t in ids for e in d.feed(t)]
    assert events == [("text", "a"), ("tool_call", "2+2"), ("tool_result", "4"), ("text", "好")]
    assert d.finish_reason == "stop" and d.text == "a好"
    assert d.tokens == len(ids) - len("never") - 1  # the terminator is not counted


@pytest.mark.parametrize("terminator", CHAT_TERMINATORS)
def test_reply_decoder_ends_at_every_terminator(terminator):
    d = ReplyDecoder(TOK)
    assert d.feed(TOK.encode("x")[0]) == [("text", "x")]
    assert d.feed(TOK.token_id(terminator)) == [] and d.finish_reason == "stop"


def test_reply_decoder_stop_strings_length_and_padding():
    d = ReplyDecoder(TOK, stop=["END"])
    out = [t for b in "abcENxyzENDmore".encode() for _, t in d.feed(b)]
    assert "".join(out) == "abcENxyz" and d.finish_reason == "stop"
    # Cut off by the caller: the held-back text comes out, the reason is the caller's.
    d = ReplyDecoder(TOK, stop=["END"])
    out = [t for b in "abcEN".encode() for _, t in d.feed(b)] + [t for _, t in d.finish("length")]
    assert "".join(out) == "abcEN" and d.finish_reason == "length"
    # Cut off inside a tool call: the call so far is shown.
    d = ReplyDecoder(TOK)
    for t in [SP[PYTHON_START], *TOK.encode("1+")]:
        d.feed(t)
    assert d.finish("length") == [("tool_call", "1+")]
    # The engine's padding (mask 0) after a sample ended also ends it.
    d = ReplyDecoder(TOK)
    assert d.feed(SP[PAD], 0) == [] and d.finish_reason == "stop"


def test_stop_strings_are_matched_in_time_linear_in_their_length():
    """A long stop string that the text keeps almost matching costs no rescan per token.

    Checking each token against every beginning of each stop string costs time in proportion
    to the stop string's length per token (16x longer stop strings, ~12x the time). CPU time
    of the same text against 64- and 1024-character stop strings must grow far less.
    """
    import time

    text_ids = TOK.encode("a" * 6000)

    def cpu_seconds(n: int) -> float:
        stream = TextStream(TOK, stop=["a" * (n - 1) + "b"])
        t0 = time.process_time()
        for i in text_ids:
            stream.push(i)
        assert stream.flush() and not stream.stopped
        return time.process_time() - t0

    cpu_seconds(64)  # warm-up
    assert cpu_seconds(1024) < 4 * cpu_seconds(64) + 0.05


def test_stop_matcher_finds_overlapping_and_repeated_beginnings():
    from llm_foundry.inference.text_stream import StopMatcher

    m = StopMatcher(["abab", "aab"])
    assert m.feed("aba") == -1 and m.partial() == 3  # "aba" may still become "abab"
    assert m.feed("b") == 1 and m.matched == "abab"
    m = StopMatcher(["aab"])
    assert m.feed("aaaa") == -1 and m.partial() == 2 and m.feed("ab") == 2
