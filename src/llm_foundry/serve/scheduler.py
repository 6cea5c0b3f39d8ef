"""The decode loop behind the server: one worker thread, many requests, fair steps.

Requests become :class:`Job` s, one per prompt, each decoding ``n`` rows (samples).
Capacity is counted in rows, so a request of 16 prompts x n=16 weighs 256, not 1:
up to ``max_concurrency`` rows decode at once (a job bigger than that runs alone),
``max_queue`` more may wait in a FIFO queue, and a request that would pass
``max_concurrency + max_queue`` rows, active and waiting together, is refused (HTTP
429 with ``Retry-After``; 400 if it could never fit) rather than left waiting without
bound. A waiting job whose client leaves gives its place back at once. The worker
thread runs the engine off the event loop, so the server answers (health, new
requests, disconnects) while it decodes; if that thread dies, every waiting request
gets a 503, new ones too, and ``/health`` reports the error.

Fairness: each round advances every active job by exactly one engine step (one
token for each of its ``n`` samples, or the prompt's prefill), round robin, and the
queue is first come first served, so no request can starve the others: a long
reply slows the others down by one step per round, never blocks them. A job whose
client went away is dropped at the start of its next step, freeing its slot.

Engine failures are logged with the request's id; the client gets that id, never the
exception's text (it may name files or internals).
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

RETRY_AFTER_S = 1  # what a 429 tells the client to wait: slots free as replies finish, usually within seconds


@dataclass(eq=False)  # a job is itself, never equal to another with the same fields
class Job:
    """One request: its prompt, sampling options and a thread-safe event channel back.

    Items put on ``queue``: ``("event", choice, kind, text)``, ``("finish", choice,
    reason)``, ``("end", usage)`` and ``("error", message[, status])``; ``end`` or ``error``
    is last. ``choice`` is ``offset`` + the sample's index.
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
    rid: str = "-"  # the request's id, for the log
    cancelled: bool = False
    scheduler: "Scheduler | None" = None  # set on admission: a waiting job leaves its queue at once on cancel()
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
        """The client went away: a waiting job leaves the queue now, a running one at its next step."""
        if not self.cancelled:
            self.cancelled = True
            if self.scheduler is not None:
                self.scheduler.drop_waiting(self)

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
        max_concurrency: rows (prompts x n) decoded at the same time.
        max_queue: rows that may wait for a slot; a request needing more is refused with 429.
    """

    def __init__(self, engine, max_concurrency: int = 8, max_queue: int = 64):
        self.engine = engine
        self.max_concurrency = max(1, int(max_concurrency))
        self.max_queue = max(0, int(max_queue))
        self.pending: collections.deque[Job] = collections.deque()
        self.active: list[Job] = []
        self.cond = threading.Condition()
        self.stopping = False
        self.error: str | None = None  # set when the worker thread died: nothing can be decoded any more
        self.completed = 0
        self.cancelled = 0  # jobs dropped because their client went away
        self.thread = threading.Thread(target=self._run, name="foundry-serve-worker", daemon=True)
        self.thread.start()

    @property
    def capacity(self) -> int:
        """Rows the server holds at once, decoding and waiting."""
        return self.max_concurrency + self.max_queue

    def submit(self, jobs: list[Job]) -> None:
        """Admit a request's jobs, all or none.

        Raises:
            ApiError: 400 for a request bigger than the whole capacity, 429 (with ``Retry-After``)
                while the rows active and waiting leave no room for it, 503 while stopping or once
                the worker has died.
        """
        from .schemas import ApiError

        rows = sum(job.n for job in jobs)
        with self.cond:
            if self.error:
                raise ApiError(503, f"the server cannot generate: {self.error}", type="server_error",
                               code="worker_failed")
            if self.stopping:
                raise ApiError(503, "the server is shutting down", type="server_error", code="shutting_down")
            if rows > self.capacity:
                raise ApiError(400, f"this request needs {rows} sequences (prompts x n) but the server holds at most "
                               f"{self.capacity}; send fewer prompts or a smaller n", code="request_too_large")
            active, waiting = _rows(self.active), _rows(self.pending)
            if active + waiting + rows > self.capacity:
                raise ApiError(429, f"the server is busy ({active} sequences running, {waiting} waiting, room for "
                               f"{self.capacity}); retry shortly", type="rate_limit_error", code="server_overloaded",
                               headers={"Retry-After": str(RETRY_AFTER_S)})
            for job in jobs:
                job.decoders = [ReplyDecoder(self.engine.tokenizer, job.stop) for _ in range(job.n)]
                job.scheduler = self
                self.pending.append(job)
            self.cond.notify()

    def drop_waiting(self, job: Job) -> None:
        """Take a cancelled job out of the queue now (a running one is dropped by the worker)."""
        with self.cond:
            if job not in self.pending:
                return
            self.pending.remove(job)
            self.cancelled += 1
        job.put(("error", "cancelled"))

    def stats(self) -> dict[str, Any]:
        """Load figures for ``/health`` (rows, as the limits count them), and ``error`` once the worker died."""
        with self.cond:
            stats = {"active": _rows(self.active), "queued": _rows(self.pending), "completed": self.completed,
                     "cancelled": self.cancelled, "max_concurrency": self.max_concurrency, "max_queue": self.max_queue}
            if self.error:
                stats["error"] = self.error
            return stats

    def close(self, timeout: float = 30.0) -> None:
        """Stop the worker after the jobs already accepted have finished (at most ``timeout`` s)."""
        with self.cond:
            self.stopping = True
            self.cond.notify()
        self.thread.join(timeout)

    # ------------------------------------------------------------------ worker thread
    def _run(self) -> None:
        try:
            self._loop()
        except BaseException:  # noqa: BLE001 (whatever killed the thread, the requests must not wait forever)
            log.critical("the decode worker died; every request now gets 503", exc_info=True)
            self._fail("the decode worker stopped after an internal error (see the server log); restart the server")

    def _loop(self) -> None:
        while True:
            with self.cond:
                while not self.active and not self.pending and not self.stopping:
                    self.cond.wait()
                if self.stopping and not self.active and not self.pending:
                    return
                # Fill the free rows in queue order; a job bigger than all of them runs once nothing else does.
                while self.pending and (not self.active or
                                        _rows(self.active) + self.pending[0].n <= self.max_concurrency):
                    self.active.append(self.pending.popleft())
                round_jobs = list(self.active)
            for job in round_jobs:
                if not self._step(job):
                    with self.cond:
                        self.active.remove(job)
                        self.completed += 1

    def _fail(self, reason: str) -> None:
        """The worker is gone: answer every job it held or queued with a 503, and refuse new ones."""
        with self.cond:
            self.error = reason
            jobs = self.active + list(self.pending)
            self.active, self.pending = [], collections.deque()
        for job in jobs:
            self._close(job)
            job.put(("error", f"the server cannot generate: {reason}", 503))

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
            return self._advance(job)
        except Exception:  # the engine failed on this request: log it, answer it, keep serving the others
            log.exception("generation failed for request %s", job.rid)
            self._close(job)
            job.put(("error", f"generation failed (request {job.rid}; the server log has the details)"))
            return False

    def _advance(self, job: Job) -> bool:
        """One engine step of ``job`` and the events it releases; False once every sample has ended."""
        if job._iter is None:
            job._iter = self.engine.stream(
                job.prompt_ids, num_samples=job.n, max_tokens=job.max_tokens, temperature=job.temperature,
                top_k=job.top_k, top_p=job.top_p, stop_ids=job.stop_ids, seed=job.seed)
        try:
            tokens, masks = next(job._iter)
        except StopIteration:
            tokens = masks = None
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


def _rows(jobs) -> int:
    return sum(job.n for job in jobs)
