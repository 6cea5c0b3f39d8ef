"""The one incremental text decoder: token ids in, text pieces out, safe to show at once.

Two things make decoding one token at a time harder than decoding a whole list:

* **UTF-8 hold-back.** A byte-level tokenizer (byte, BPE) may split one character over
  several tokens; until the last byte arrives the text ends in U+FFFD. Such a tail is
  held until the character is complete (or the stream ends).
* **Stop strings.** Text is never released past a stop string, and a tail that may be
  the beginning of one is held while it can still grow into it, so a stop string never
  leaks out half-printed. Stop strings may span any number of tokens.

:class:`TextStream` does both for plain text (``foundry generate``, :class:`Generator`).
:class:`ReplyDecoder` splits a chat reply into text (through a :class:`TextStream`), tool
calls and tool results (``foundry chat``, :meth:`Engine.chat`, the server).
"""

from __future__ import annotations

from typing import Sequence

from ..tokenizers import Tokenizer
from ..tokenizers.special import (CHAT_TERMINATORS, OUTPUT_END, OUTPUT_START, PAD, PYTHON_END, PYTHON_START,
                                  token_ids)

Event = tuple[str, str]  # (kind, text): kind is "text", "tool_call" or "tool_result"


class StopMatcher:
    """Finds stop strings in text that arrives piece by piece, in time linear in the text.

    One Knuth–Morris–Pratt automaton per stop string: its state is the length of the longest
    beginning of the stop string that the text seen so far ends with. Each character moves
    every automaton once (amortised O(1)), so neither a long text nor a long stop string is
    ever scanned again — a rescan per token would be quadratic in the stop strings' length.
    Hand-written because the standard library only searches whole strings.
    """

    def __init__(self, stops: Sequence[str]):
        self.stops = list(stops)
        self.fail = [self._failure(s) for s in self.stops]
        self.state = [0] * len(self.stops)
        self.matched = ""  # the stop string that completed, once one has

    @staticmethod
    def _failure(s: str) -> list[int]:
        """fail[i]: the longest proper border of s[:i+1] (the classic prefix function)."""
        fail, k = [0] * len(s), 0
        for i in range(1, len(s)):
            while k and s[i] != s[k]:
                k = fail[k - 1]
            if s[i] == s[k]:
                k += 1
            fail[i] = k
        return fail

    def feed(self, text: str) -> int:
        """Advance over ``text``; the index in it just past the first completed stop string, or -1.

        After a match the automata are left where they are: the caller stops the stream.
        """
        for j, ch in enumerate(text):
            for n, s in enumerate(self.stops):
                k, fail = self.state[n], self.fail[n]
                while k and s[k] != ch:
                    k = fail[k - 1]
                if s[k] == ch:
                    k += 1
                if k == len(s):
                    self.matched = s
                    return j + 1
                self.state[n] = k
        return -1

    def partial(self) -> int:
        """Characters at the end of the text that may still grow into a stop string."""
        return max(self.state, default=0)


class TextStream:
    """Decode token ids as they come; :meth:`push` returns the text now safe to show.

    Args:
        tokenizer: any tokenizer.
        stop: stop strings; the text ends before the first one (which is not returned).
        skip_special: drop special tokens (True) or show their names (False).
    """

    def __init__(self, tokenizer: Tokenizer, stop: Sequence[str] = (), skip_special: bool = True):
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.matcher = StopMatcher(self.stop)
        self.skip_special = skip_special
        self.ids: list[int] = []
        # ids[prefix:read] were decoded already: they are decoded again with the new ids as context
        # (a tokenizer may decode a token differently after another), and only the difference is new.
        self.prefix = 0
        self.read = 0
        self.held = ""        # decoded text not released yet: it may be the start of a stop string
        self.text = ""        # all text released so far
        self.stopped = False  # a stop string was found; nothing more is released

    def push(self, token: int) -> str:
        """Add one token; the text it releases (often ``""``)."""
        if self.stopped:
            return ""
        self.ids.append(int(token))
        return self._release(final=False)

    def flush(self) -> str:
        """The end of the stream: release what is held (never past a stop string)."""
        if self.stopped:
            return ""
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        if self.read < len(self.ids):
            decode = self.tokenizer.decode
            before = decode(self.ids[self.prefix:self.read], skip_special=self.skip_special)
            after = decode(self.ids[self.prefix:], skip_special=self.skip_special)
            if final or not after.endswith("\ufffd"):  # else: a character is still incomplete
                new = after[len(before):]
                end = self.matcher.feed(new)
                if end >= 0:  # a stop string ends inside the new text: release up to its start
                    buf = self.held + new[:end]
                    out, self.stopped = buf[:len(buf) - len(self.matcher.matched)], True
                    self.held, self.text = "", self.text + out
                    return out
                self.held += new
                self.prefix, self.read = self.read, len(self.ids)
        buf = self.held
        # Text released before never ends in the beginning of a stop string, so one can only start
        # inside `buf`; hold the tail that may still grow into one (all of it at the end of the stream).
        out = buf if final else buf[:len(buf) - self.matcher.partial()]
        self.held = buf[len(out):]
        self.text += out
        return out


class ReplyDecoder:
    """One chat reply's tokens in, events out: text pieces, tool calls and tool results.

    The reply ends (``finish_reason`` "stop") at a terminator (``CHAT_TERMINATORS``), at
    the engine's padding after a sample ended (pad with mask 0), or at a stop string; or
    when the caller calls :meth:`finish` (e.g. "length"). Stop strings apply to the text,
    each text run between tool blocks on its own; tool blocks are never cut by them.

    Args:
        tokenizer: a tokenizer with the chat special tokens.
        stop: stop strings (as OpenAI's ``stop``).
    """

    def __init__(self, tokenizer: Tokenizer, stop: Sequence[str] = ()):
        self.tok = tokenizer
        self.stop = [s for s in stop if s]
        self.ends = token_ids(tokenizer, CHAT_TERMINATORS)
        tid = tokenizer.token_id
        self.pad = tid(PAD)
        self.py_start, self.py_end = tid(PYTHON_START), tid(PYTHON_END)
        self.out_start, self.out_end = tid(OUTPUT_START), tid(OUTPUT_END)
        self.stream = TextStream(tokenizer, self.stop)  # the current text run
        self.block: str | None = None   # "python" or "output" while inside a tool block
        self.block_ids: list[int] = []  # the open block's contents
        self.finish_reason: str | None = None
        self.tokens = 0  # completion tokens (the terminating token not counted)
        self.text = ""   # all text released so far (the `content` of a non-streamed reply)

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def feed(self, token: int, mask: int = 1) -> list[Event]:
        """The events one more token releases."""
        if self.done:
            return []
        if token in self.ends or (token == self.pad and mask == 0):
            return self.finish("stop")
        self.tokens += 1
        if self.block is None:
            if token in (self.py_start, self.out_start):
                events = self._text(self.stream.flush())
                if not self.done:
                    self.block = "python" if token == self.py_start else "output"
                    self.block_ids, self.stream = [], TextStream(self.tok, self.stop)
                return events
            return self._text(self.stream.push(token))
        # Inside a block: only its own end marker closes it.
        if (self.block, token) in (("python", self.py_end), ("output", self.out_end)):
            kind = "tool_call" if self.block == "python" else "tool_result"
            self.block = None
            return [(kind, self.tok.decode(self.block_ids))]
        self.block_ids.append(token)
        return []

    def finish(self, reason: str) -> list[Event]:
        """End the reply (if it has not ended already), releasing held-back text."""
        if self.done:
            return []
        events: list[Event] = []
        if self.block is None:
            events = self._text(self.stream.flush())
        elif self.block == "python" and self.block_ids:
            # Cut off inside a tool call: show what there was.
            events = [("tool_call", self.tok.decode(self.block_ids))]
        self.finish_reason = self.finish_reason or reason
        return events

    def _text(self, piece: str) -> list[Event]:
        if self.stream.stopped:
            self.finish_reason = "stop"
        if not piece:
            return []
        self.text += piece
        return [("text", piece)]
