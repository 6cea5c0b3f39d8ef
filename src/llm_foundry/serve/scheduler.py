"""The decode loop behind the server: one worker thread, many requests, fair steps.

Requests become :class:`Job` s. Up to ``max_concurrency`` jobs are active at once;
more wait in a FIFO queue of ``max_queue`` places, and a request beyond that is
refused (HTTP 429) rather than left waiting without bound. The worker thread runs
the engine off the event loop, so the server answers (health, new requests,
disconnects) while it decodes.

Fairness: each round advances every active job by exactly one engine step (one
token for each of its ``n`` samples, or the prompt's prefill), round robin, and the
queue is first come first served, so no request can starve the others: a long
reply slows the others down by one step per round, never blocks them. A job whose
client went away is dropped at the start of its next step, freeing its slot.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

from ..inference.text_stream import ReplyDecoder

log = logging.getLogger("llm_foundry.serve")

# Each sample's tokens become events (text, tool calls, tool results) through the one reply
# decoder of the inference package; it also ends a sample at a terminator or a stop string.
__all__ = ["Job", "Scheduler"]


@dataclass
class Job:
    """One request: its prompt, sampling options and a thread-safe event channel back.

    Items put on ``queue``: ``("event", choice, kind, text)``, ``("finish", choice,
    reason)``, ``("end", usage)`` and ``("error", message)``; ``end`` or ``error`` is last.
    ``choice`` is ``offset`` + the sample's index.
    """

    prompt_ids: list[int]
    n: int
    max_tokens: int
    temperature: float
    top_p: float | None
    top_k: int | None
    stop: list[str]
    seed: int | None
    stop_ids: list[int]
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    offset: int = 0  # choice index of sample 0 (a completions request with several prompts shares one queue)
    cancelled: bool = False
    started: float = field(default_factory=time.monotonic)
    decoders: list[ReplyDecoder] = field(default_factory=list)
    _iter: Iterator | None = None

    def put(self, *items: tuple) -> None:
        # Called from the worker thread: hand the items to the event loop that owns the queue,
        # all of one step in one wake-up of the loop.
        if not items:
            return
        try:
            self.loop.call_soon_threadsafe(_put_all, self.queue, items)
        except RuntimeError:  # the loop is gone (server stopped); nobody is listening
            pass

    def cancel(self) -> None:
        """The client went away: the worker drops this job at its next step."""
        self.cancelled = True

    def usage(self) -> dict[str, int]:
        completion = sum(d.tokens for d in self.decoders)
        return {"prompt_tokens": len(self.prompt_ids), "completion_tokens": completion,
                "total_tokens": len(self.prompt_ids) + completion}


def _put_all(queue: asyncio.Queue, items: tuple) -> None:
    for item in items:
        queue.put_nowait(item)


class Scheduler:
    """Runs jobs on an engine from one worker thread (see the module docstring).

    Args:
        engine: an :class:`~llm_foundry.inference.engine.Engine`.
        max_concurrency: jobs decoded at the same time (slots).
        max_queue: jobs that may wait for a slot; one more is refused with 429.
    """

    def __init__(self, engine, max_concurrency: int = 8, max_queue: int = 64):
        self.engine = engine
        self.max_concurrency = max(1, int(max_concurrency))
        self.max_queue = max(0, int(max_queue))
        self.pending: collections.deque[Job] = collections.deque()
        self.active: list[Job] = []
        self.cond = threading.Condition()
        self.stopping = False
        self.completed = 0
        self.cancelled = 0  # jobs dropped because their client went away
        self.thread = threading.Thread(target=self._run, name="foundry-serve-worker", daemon=True)
        self.thread.start()

    def submit(self, job: Job) -> None:
        """Queue ``job``; raises :class:`~.schemas.ApiError` 429 (or 503 while stopping) when it cannot."""
        from .schemas import ApiError

        with self.cond:
            if self.stopping:
                raise ApiError(503, "the server is shutting down", type="server_error", code="shutting_down")
            if len(self.active) >= self.max_concurrency and len(self.pending) >= self.max_queue:
                raise ApiError(429, f"the server is busy ({len(self.active)} requests running, {len(self.pending)} "
                               "waiting); retry shortly", type="rate_limit_error", code="server_overloaded")
            job.decoders = [ReplyDecoder(self.engine.tokenizer, job.stop) for _ in range(job.n)]
            self.pending.append(job)
            self.cond.notify()

    def stats(self) -> dict[str, Any]:
        with self.cond:
            return {"active": len(self.active), "queued": len(self.pending), "completed": self.completed,
                    "cancelled": self.cancelled, "max_concurrency": self.max_concurrency, "max_queue": self.max_queue}

    def close(self, timeout: float = 30.0) -> None:
        """Stop the worker after the jobs already accepted have finished (at most ``timeout`` s)."""
        with self.cond:
            self.stopping = True
            self.cond.notify()
        self.thread.join(timeout)

    # ------------------------------------------------------------------ worker thread
    def _run(self) -> None:
        while True:
            with self.cond:
                while not self.active and not self.pending and not self.stopping:
                    self.cond.wait()
                if self.stopping and not self.active and not self.pending:
                    return
                while self.pending and len(self.active) < self.max_concurrency:
                    self.active.append(self.pending.popleft())
                round_jobs = list(self.active)
            for job in round_jobs:
                if not self._step(job):
                    with self.cond:
                        self.active.remove(job)
                        self.completed += 1

    def _step(self, job: Job) -> bool:
        """Advance ``job`` by one engine step; False once it is over (finished, failed or cancelled)."""
        if job.cancelled:
            self._close(job)
            with self.cond:
                self.cancelled += 1
            log.info("client disconnected; freed its slot after %d completion tokens", job.usage()["completion_tokens"])
            job.put(("error", "cancelled"))
            return False
        try:
            if job._iter is None:
                job._iter = self.engine.stream(
                    job.prompt_ids, num_samples=job.n, max_tokens=job.max_tokens, temperature=job.temperature,
                    top_k=job.top_k, top_p=job.top_p, stop_ids=job.stop_ids, seed=job.seed)
            tokens, masks = next(job._iter)
        except StopIteration:
            tokens = None
        except Exception as e:  # the engine failed on this request: report it, keep serving the others
            log.exception("engine error")
            self._close(job)
            job.put(("error", f"{type(e).__name__}: {e}"))
            return False
        out: list[tuple] = []
        if tokens is not None:
            for i, (tok, mask) in enumerate(zip(tokens, masks)):
                d = job.decoders[i]
                if d.done:
                    continue
                out += [("event", job.offset + i, kind, text) for kind, text in d.feed(int(tok), int(mask))]
                if not d.done and d.tokens >= job.max_tokens:
                    out += [("event", job.offset + i, kind, text) for kind, text in d.finish("length")]
                if d.done:
                    out.append(("finish", job.offset + i, d.finish_reason))
            if not all(d.done for d in job.decoders):
                job.put(*out)
                return True
        # The engine is done with every sample (or all of them ended here).
        for i, d in enumerate(job.decoders):
            if not d.done:
                out += [("event", job.offset + i, kind, text) for kind, text in d.finish("length")]
                out.append(("finish", job.offset + i, d.finish_reason))
        self._close(job)
        job.put(*out, ("end", job.usage()))
        return False

    @staticmethod
    def _close(job: Job) -> None:
        if job._iter is not None and hasattr(job._iter, "close"):
            try:
                job._iter.close()
            except Exception:  # closing a half-run generator must never take the worker down
                pass
