"""Engine: chat-token generation with a KV cache, many samples, batches and tool use.

How a request runs:

1. **Prefill**: the prompt goes through the model once, filling the KV cache. For
   ``num_samples > 1`` the batch-1 cache is copied into N rows (``KVCache.expand_batch``),
   so N samples share one prefill.
2. **Decode**: each step feeds one token per row and reads one row of logits; a
   row's next token is either *sampled* (temperature, top-k, top-p) or *forced*.
3. **Tool use**: tokens between ``<|python_start|>`` and ``<|python_end|>`` are
   collected; when the block closes, the expression goes to the safe calculator
   (:func:`~llm_foundry.inference.tools.calculate`) and
   ``<|output_start|>result<|output_end|>`` is queued as forced tokens (mask 0).
   With ``tools=False`` blocks are not evaluated and the model writes what follows.
4. A row ends at a terminator (``CHAT_TERMINATORS`` of :mod:`~llm_foundry.tokenizers.special`),
   a stop id, after ``max_tokens`` tokens, or when the context is full; after that it
   yields padding.

An engine with ``mode="text"`` continues plain text instead (what :class:`Generator`
wraps): a row ends only at ``<|eos|>``, ``<|bos|>`` is never sampled, and when the
context is full each row keeps its newest half, which is prefilled again, and goes on.

Sampling arguments are checked by :func:`~llm_foundry.config.sampling.check_sampling`;
text comes out of the tokens through :mod:`~llm_foundry.inference.text_stream`.

Several *different* prompts (``generate_batch``) decode together without padding
inside the cache: all rows are prefilled with the length of the shortest prompt, and
the rest of each longer prompt is fed one token per step like forced tokens that are
not returned. Every row's tokens therefore sit at their true positions, no attention
mask is needed, and the result equals decoding each prompt alone.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch

from ..models import MiniLLM
from ..tokenizers import Tokenizer
from ..tokenizers.special import (ASSISTANT_END, ASSISTANT_START, BOS, CHAT_TERMINATORS, NEVER_SAMPLED, OUTPUT_END,
                                  OUTPUT_START, PAD, PYTHON_END, PYTHON_START, TEXT_TERMINATORS, token_ids)
from ..utils.device import autocast_context, resolve_device, resolve_dtype
from ..utils.errors import FoundryError
from .decoding import DecodeModels, decode_models
from ..config.sampling import check_sampling
from .sampling import sample_next
from .text_stream import ReplyDecoder
from .tools import ToolError, calculate


TokenCallback = Callable[[int, int, int], None]  # (row, token, mask)


@dataclass
class _Row:
    """Decoding state of one sequence."""

    pending: deque = field(default_factory=deque)   # rest of the prompt, fed but not returned
    forced: deque = field(default_factory=deque)    # tool output to force into the stream
    python: list[int] | None = None                 # ids of an open python block
    produced: int = 0                               # tokens returned so far (sampled + forced)
    context: list[int] = field(default_factory=list)  # every token fed so far (to refill a full context)
    finish: str | None = None                       # "stop" or "length" once the row has ended


@dataclass
class Step:
    """One decode step of all rows: the token and mask of each, and which rows just ended."""

    tokens: list[int]
    masks: list[int]
    finished: list[str | None]   # per row: "stop"/"length" on the step a row ends, else None
    active: list[bool]           # per row: whether the token is a real output (not prompt feed or padding)


class Engine:
    """Generate chat replies from a MiniLLM, with the calculator tool.

    Args:
        model: the model (put in eval mode for each call).
        tokenizer: its tokenizer (byte or bpe: they reserve the chat tokens).
        precision: ``auto`` (bf16 where fast), ``bf16`` or ``fp32``.
        tools: evaluate python blocks with the calculator and force the result.
        frozen: the model's weights will not change while this engine is used, so it may
            decode with inference copies (``decode_models``: fused projections, bf16
            weights on a CPU). Leave False when the model is being trained (RL): the
            engine then always reads the live weights, under autocast.
        compile: with ``frozen``, decode with compiled prefill and step models
            (``decode_models(..., compile=True)``): the first reply waits for the compiler
            (and once more when the batch size first changes), later ones decode faster
            on a CPU (docs/*/performance.md).
        mode: ``"chat"`` (replies end at the chat terminators and at the end of the context)
            or ``"text"`` (plain text, as :class:`Generator`: see the module docstring).
    """

    def __init__(self, model: MiniLLM, tokenizer: Tokenizer, precision: str = "auto", tools: bool = True,
                 frozen: bool = False, compile: bool = False, mode: str = "chat"):
        if mode not in ("chat", "text"):
            raise FoundryError(f"engine mode must be 'chat' or 'text', got {mode!r}")
        self.model = model
        self.tokenizer = tokenizer
        self.tools = tools
        self.mode = mode
        self.frozen = frozen
        self.compile = compile and frozen
        self.precision = precision
        self.device = next(model.parameters()).device
        self.amp_dtype = resolve_dtype(precision, self.device, model.cfg.dim)
        self._decoders: dict[bool, DecodeModels] = {}
        tid = tokenizer.token_id
        self.pad_id = tid(PAD) if tid(PAD) is not None else 0
        chat = mode == "chat"
        self.suppress = sorted(token_ids(tokenizer, NEVER_SAMPLED if chat else (*NEVER_SAMPLED, BOS)))
        self.terminators = token_ids(tokenizer, CHAT_TERMINATORS if chat else TEXT_TERMINATORS)
        self.assistant_start, self.assistant_end = tid(ASSISTANT_START), tid(ASSISTANT_END)
        self.python_start, self.python_end = tid(PYTHON_START), tid(PYTHON_END)
        self.output_start, self.output_end = tid(OUTPUT_START), tid(OUTPUT_END)

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str = "auto", precision: str = "auto", tools: bool = True,
                        compile: bool = False) -> "Engine":
        """Load a model folder (or a run folder) into an engine."""
        from ..models.model_dir import load_model_dir

        bundle = load_model_dir(path, resolve_device(device))
        return cls(bundle.model, bundle.tokenizer, precision, tools, frozen=True, compile=compile)

    # ------------------------------------------------------------ public API
    def stream(self, prompt_ids: list[int], *, num_samples: int = 1, max_tokens: int = 256, temperature: float = 1.0,
               top_k: int | None = None, top_p: float | None = None, stop_ids: Sequence[int] = (),
               seed: int | None = None, use_cache: bool = True) -> Iterator[tuple[list[int], list[int]]]:
        """Yield, one step at a time, ``(token of each sample, mask of each sample)``.

        The mask is 1 for a token the model sampled, 0 for one the tool forced. All
        samples share one prefill. A sample ends at a terminator, a stop id, or
        ``max_tokens`` (the ending token is yielded); after
        that its slot yields the pad id with mask 0. The stream stops when every sample
        has ended. ``use_cache=False`` recomputes the whole context each step (slow;
        for checking the cache).
        """
        for step in self._decode([list(prompt_ids)], num_samples, max_tokens, temperature, top_k, top_p, stop_ids,
                                 seed, use_cache):
            yield step.tokens, step.masks

    def generate(self, prompt_ids: list[int], *, on_token: TokenCallback | None = None,
                 **kwargs) -> tuple[list[list[int]], list[list[int]]]:
        """Whole samples: ``(tokens of each sample, masks of each sample)``.

        Without the prompt and without the terminating token. Same options as :meth:`stream`;
        ``on_token(sample, token, mask)`` is called for every token as it is produced.
        """
        n = kwargs.get("num_samples", 1)
        kwargs = {k: v for k, v in kwargs.items() if k != "num_samples"}
        tokens, masks, _ = self._collect([list(prompt_ids)], n, on_token=on_token, **kwargs)
        return tokens, masks

    def generate_batch(self, prompts: list[list[int]], *, with_masks: bool = False,
                       on_token: TokenCallback | None = None, **kwargs):
        """Complete several different prompts at once; one token list per prompt.

        With ``num_samples=N`` each prompt is sampled N times and the list holds
        ``len(prompts) * N`` completions, the N of each prompt together. Tokens are
        without the prompt and without the terminating token. ``with_masks=True``
        returns ``(tokens, masks)`` instead, the masks as in :meth:`generate`.
        ``on_token(row, token, mask)`` streams each token as it is produced (``row``
        indexes the returned list).
        """
        n = kwargs.pop("num_samples", 1)
        if not prompts:
            return ([], []) if with_masks else []
        # Rows advance together, so a short prompt waits while a long one is fed token by
        # token. Prompts of very different lengths therefore go in separate groups (sorted
        # by length, a new group when the spread would exceed half the reply budget).
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        spread = max(8, kwargs.get("max_tokens", 256) // 2)
        groups: list[list[int]] = [[order[0]]]
        for i in order[1:]:
            if len(prompts[i]) - len(prompts[groups[-1][0]]) > spread:
                groups.append([])
            groups[-1].append(i)
        out: list[list[int]] = [[] for _ in range(len(prompts) * n)]
        out_masks: list[list[int]] = [[] for _ in range(len(prompts) * n)]
        for group in groups:
            rows = [i * n + k for i in group for k in range(n)]
            tokens, masks, _ = self._collect([list(prompts[i]) for i in group], n, on_token=on_token, rows=rows,
                                             **kwargs)
            for k, i in enumerate(group):
                out[i * n:(i + 1) * n] = tokens[k * n:(k + 1) * n]
                out_masks[i * n:(i + 1) * n] = masks[k * n:(k + 1) * n]
        return (out, out_masks) if with_masks else out

    def chat(self, messages: list[dict], stop: Sequence[str] = (), **kwargs) -> Iterator[dict]:
        """Stream one assistant reply to ``messages`` as events.

        Events: ``{"type": "text", "text"}`` (pieces of the reply), ``{"type": "tool_call",
        "text": expr}``, ``{"type": "tool_result", "text": result}``, and last
        ``{"type": "done", "finish_reason": "stop"|"length", "completion_tokens", "prompt_tokens"}``.
        ``stop``: stop strings (the reply ends before the first). Other options as
        :meth:`stream` (``num_samples`` is always 1).
        """
        from ..data.chat import render_prompt

        prompt = render_prompt(self.tokenizer, messages)
        kwargs.pop("num_samples", None)
        reply = ReplyDecoder(self.tokenizer, stop)
        for step in self._decode([prompt], 1, **kwargs):
            if not step.active[0]:
                continue
            if step.finished[0] == "stop":  # the ending token (maybe a caller's stop id) is not part of the reply
                events = reply.finish("stop")
            else:
                events = reply.feed(step.tokens[0], step.masks[0])
                if step.finished[0]:
                    events += reply.finish(step.finished[0])
            for kind, text in events:
                yield {"type": kind, "text": text}
            if reply.done:
                break  # (a stop string: closing the loop frees its cache)
        for kind, text in reply.finish("length"):
            yield {"type": kind, "text": text}
        yield {"type": "done", "finish_reason": reply.finish_reason, "completion_tokens": reply.tokens,
               "prompt_tokens": len(prompt)}

    # ------------------------------------------------------------ decoding
    def _collect(self, prompts: list[list[int]], num_samples: int, on_token: TokenCallback | None = None,
                 rows: list[int] | None = None, **kwargs):
        """Run :meth:`_decode` to the end; ``rows`` maps local rows to the caller's for ``on_token``."""
        names = rows
        rows = len(prompts) * num_samples
        tokens: list[list[int]] = [[] for _ in range(rows)]
        masks: list[list[int]] = [[] for _ in range(rows)]
        finish: list[str] = ["length"] * rows
        for step in self._decode(prompts, num_samples, **kwargs):
            for i in range(rows):
                if not step.active[i]:
                    continue
                if step.finished[i]:
                    finish[i] = step.finished[i]
                    if step.finished[i] == "stop":
                        continue  # the terminating token is not part of the completion
                tokens[i].append(step.tokens[i])
                masks[i].append(step.masks[i])
                if on_token is not None:
                    on_token(names[i] if names else i, step.tokens[i], step.masks[i])
        return tokens, masks, finish

    def _decoder(self, rows: int) -> DecodeModels:
        """The models that decode ``rows`` sequences: the live model, or (frozen) inference copies."""
        if not self.frozen:
            return DecodeModels(self.model, self.model, self.amp_dtype)
        key = rows > 2  # decode_models picks its step model by batch size: 1-2 rows vs more
        if key not in self._decoders:
            self._decoders[key] = decode_models(self.model, self.precision, batch_size=rows, compile=self.compile)
        return self._decoders[key]

    def _forward(self, model: MiniLLM, amp_dtype, ids: torch.Tensor, cache) -> torch.Tensor:
        """Last-position logits (fp32) of ``ids``, in eval mode, without autograd."""
        was_training = model.training
        if was_training:  # the live model during RL; inference copies are in eval mode already
            model.eval()
        try:
            with torch.no_grad(), autocast_context(self.device, amp_dtype):
                logits, _ = model(ids, cache=cache, last_only=True)
        finally:
            if was_training:
                model.train()
        logits = logits[:, -1, :].float()
        if self.suppress:
            logits[:, self.suppress] = float("-inf")
        if logits.size(-1) > self.tokenizer.vocab_size:
            # Spare rows of a model with vocabulary headroom are no tokens yet.
            logits[:, self.tokenizer.vocab_size:] = float("-inf")
        return logits

    def _decode(self, prompts: list[list[int]], num_samples: int = 1, max_tokens: int = 256, temperature: float = 1.0,
                top_k: int | None = None, top_p: float | None = None, stop_ids: Sequence[int] = (),
                seed: int | None = None, use_cache: bool = True) -> Iterator[Step]:
        """The decode loop over ``len(prompts) * num_samples`` rows (see the module docstring)."""
        if num_samples < 1:
            raise FoundryError("num_samples must be >= 1")
        check_sampling(temperature=temperature, top_k=top_k, top_p=top_p, max_new_tokens=max_tokens, seed=seed,
                       names={"max_new_tokens": "max_tokens"})
        if not prompts or any(not p for p in prompts):
            raise FoundryError("every prompt needs at least one token")
        ctx = self.model.cfg.max_seq_len
        longest = max(len(p) for p in prompts)
        slide = self.mode == "text"  # a full context is refilled with its newest half, not the end
        if longest > ctx or (longest == ctx and not slide):
            raise FoundryError(f"the prompt has {longest} tokens but the model's context is {ctx}; shorten it")
        stop = set(int(i) for i in stop_ids) | self.terminators
        gen = torch.Generator(device=self.device)
        if seed is None:
            gen.seed()  # fresh randomness for this call only; the global RNG is left alone
        else:
            gen.manual_seed(seed)

        # Rows: each prompt repeated num_samples times. Prefill the common length once.
        common = min(len(p) for p in prompts)
        capacity = min(ctx, longest + max_tokens)
        rows = [self._prime(_Row(pending=deque(p[common:]), context=p[:common]), p)
                for p in prompts for _ in range(num_samples)]
        n = len(rows)
        dm = self._decoder(n)
        if use_cache:
            if len(prompts) == 1:
                cache = dm.new_cache(1, capacity)
                logits = self._forward(dm.prefill, dm.amp_dtype, torch.tensor([prompts[0]], device=self.device), cache)
                if n > 1:
                    cache = cache.expand_batch(n)
                    logits = logits.expand(n, -1).contiguous()
            else:
                cache = dm.new_cache(n, capacity)
                head = [p[:common] for p in prompts for _ in range(num_samples)]
                logits = self._forward(dm.prefill, dm.amp_dtype, torch.tensor(head, device=self.device), cache)
        else:
            cache = None
            seq = torch.tensor([p[:common] for p in prompts for _ in range(num_samples)], device=self.device)
            logits = self._forward(dm.prefill, dm.amp_dtype, seq, None)
        pos = common  # tokens in every row's context so far
        live = list(range(n))  # the rows still in the batch tensors, in order

        while True:
            sampled = dict(zip(live, sample_next(logits, temperature, top_k, top_p, gen).tolist()))
            tokens, masks, finished, active = [], [], [], []
            for i, row in enumerate(rows):
                tok, mask, fin, act = self.pad_id, 0, None, False
                if row.finish is None:
                    if row.pending:
                        tok = row.pending.popleft()
                    else:
                        act = True
                        if row.forced:
                            tok = row.forced.popleft()
                        else:
                            tok, mask = sampled[i], 1
                        row.produced += 1
                        fin = self._advance(row, tok, mask, stop)
                        # Prompt + reply never exceed the context, so a reply can always be fed back.
                        if fin is None and (row.produced >= max_tokens or (pos + 1 >= capacity and not slide)):
                            fin = "length"
                        row.finish = fin
                    row.context.append(tok)
                tokens.append(tok)
                masks.append(mask)
                finished.append(fin)
                active.append(act)
            if any(active):
                yield Step(tokens, masks, finished, active)
            running = [i for i in live if rows[i].finish is None]
            if not running:
                return
            if len(running) <= len(live) // 2:
                # Most rows have ended: drop them from the batch so no compute is spent on them.
                keep = torch.tensor([live.index(i) for i in running], device=self.device)
                if use_cache:
                    cache.select_rows(keep)
                else:
                    seq = seq.index_select(0, keep)
                live = running
            if slide and pos >= capacity:
                # The context is full: keep each row's newest half (this token included) and prefill
                # it again. The model then sees only the recent half-window, and the text goes on.
                pos = ctx // 2
                seq = torch.tensor([rows[i].context[-pos:] for i in live], device=self.device)
                if use_cache:
                    cache.reset()
                logits = self._forward(dm.prefill, dm.amp_dtype, seq, cache)
                continue
            step_ids = torch.tensor([tokens[i] for i in live], device=self.device).unsqueeze(1)
            if use_cache:
                logits = self._forward(dm.step, dm.amp_dtype, step_ids, cache)
            else:
                seq = torch.cat([seq, step_ids], dim=1)
                logits = self._forward(dm.prefill, dm.amp_dtype, seq, None)
            pos += 1

    def _prime(self, row: _Row, prompt: list[int]) -> _Row:
        """Carry a python block the prompt leaves open (or just closed) into the row's state.

        A prompt may end inside the assistant's turn (continuing a reply): if it ends with
        ``<|python_end|>``, the tool's output is forced first; if it ends inside an open
        block, the expression so far is kept.
        """
        last = max((i for i, t in enumerate(prompt) if t in (self.python_start, self.output_start,
                                                                self.output_end, self.assistant_start)), default=-1)
        if last < 0 or prompt[last] != self.python_start:
            return row
        body = prompt[last + 1:]
        if body and body[-1] == self.python_end:
            row.python = body[:-1]
            self._advance(row, self.python_end, 1, set())
        elif self.python_end not in body:
            row.python = list(body)
        return row

    def _advance(self, row: _Row, tok: int, mask: int, stop: set[int]) -> str | None:
        """Update a row's tool state after it emitted ``tok``; returns "stop" if the row ends."""
        if mask == 1 and tok in stop:
            return "stop"
        if mask == 0:
            return None  # forced tokens never end a row or open a block
        if tok == self.python_start:
            row.python = []
        elif tok == self.python_end and row.python is not None:
            expr = self.tokenizer.decode(row.python)
            row.python = None
            if self.tools:
                row.forced.extend([self.output_start, *self.tokenizer.encode(run_tool(expr)), self.output_end])
        elif row.python is not None:
            row.python.append(tok)
        return None


def run_tool(expression: str) -> str:
    """The calculator's answer to ``expression``, or ``error: reason`` (what the model then sees)."""
    try:
        return calculate(expression)
    except ToolError as e:
        return f"error: {e}"
