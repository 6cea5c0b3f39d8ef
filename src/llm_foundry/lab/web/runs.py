"""The run queue: every test run of every learner goes through a fixed number of workers.

    queue = RunQueue(workers=2, execute=run_one)
    job = queue.submit(owner="ana", module=2, payload=...)   # job.position(): 1 = next to start
    ...job.events(since) ...                                # output as it comes, then "done"

A run is a sandboxed pytest (seconds, up to the module's time limit), so more runs at once than
there are CPUs only makes each slower; a FIFO queue with ``workers`` runs at a time keeps every
run at full speed and makes waiting predictable: a job with ``k`` jobs ahead of it (running or
waiting) starts after at most ``floor(k / workers)`` run times and finishes within
``floor(k / workers) + 1`` of them.

The output a job keeps for its stream is capped (:data:`STREAM_CAP`): learner code that prints
megabytes costs the page nothing (the sandbox itself stops a run past its output limit).
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

STREAM_CAP = 64 << 10  # characters of live output kept per run


@dataclass
class Job:
    """One queued test run. ``events`` is append-only: ``("output", text)``, ``("start", "")``,
    ``("done", "")``; ``results`` is set before ``done``."""

    id: str
    owner: str
    module: int
    payload: Any
    submitted: float = field(default_factory=time.monotonic)
    started: float | None = None
    finished: float | None = None
    results: dict | None = None
    error: str = ""
    streamed: int = 0
    ahead: int = 0  # jobs ahead of it (running or waiting) when it was submitted
    events: list[tuple[str, str]] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def add(self, kind: str, text: str = "") -> None:
        with self.changed:
            self.events.append((kind, text))
            self.changed.notify_all()

    def output(self, stream: str, data: bytes) -> None:
        """The sandbox's output callback: keep up to :data:`STREAM_CAP` characters, then one notice."""
        if self.streamed >= STREAM_CAP:
            return
        text = data.decode("utf-8", "replace")[:STREAM_CAP - self.streamed]
        self.streamed += len(text)
        self.add("output", text)
        if self.streamed >= STREAM_CAP:
            self.add("output", "\n… (more output; the page shows only the first 64 KiB)\n")

    def wait(self, since: int, timeout: float) -> list[tuple[str, str]]:
        """The events after the first ``since``, waiting up to ``timeout`` for one."""
        with self.changed:
            if len(self.events) <= since:
                self.changed.wait(timeout)
            return self.events[since:]

    @property
    def done(self) -> bool:
        return self.finished is not None

    def timing(self) -> dict[str, float]:
        """What the queue did to this job: jobs ahead at submit, seconds waited, seconds run."""
        start = self.started if self.started is not None else self.submitted
        end = self.finished if self.finished is not None else start
        return {"ahead": self.ahead, "waited_s": round(start - self.submitted, 3), "ran_s": round(end - start, 3)}


class RunQueue:
    """A FIFO of jobs run by ``workers`` threads, each calling ``execute(job)`` (which returns the results)."""

    def __init__(self, workers: int, execute: Callable[[Job], dict]):
        self.workers = workers
        self._execute = execute
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._waiting: list[Job] = []
        self._running: list[Job] = []
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._threads = [threading.Thread(target=self._work, name=f"lab-run-{i}", daemon=True) for i in range(workers)]
        for t in self._threads:
            t.start()

    def submit(self, owner: str, module: int, payload: Any) -> Job:
        with self._lock:
            job = Job(f"{next(self._ids)}", owner, module, payload, ahead=len(self._running) + len(self._waiting))
            self._jobs[job.id] = job
            self._waiting.append(job)
            # forget old finished jobs (their results are in the learner's progress database)
            if len(self._jobs) > 1000:
                for old in [j for j in self._jobs.values() if j.done][:len(self._jobs) - 1000]:
                    del self._jobs[old.id]
        self._queue.put(job)
        return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def position(self, job: Job) -> int:
        """0 when running or done; else 1 + the jobs waiting ahead of it."""
        with self._lock:
            return self._waiting.index(job) + 1 if job in self._waiting else 0

    def ahead(self, job: Job) -> int:
        """Jobs ahead of ``job`` (running or waiting): what its predicted wait is made of."""
        with self._lock:
            return (len(self._running) + self._waiting.index(job)) if job in self._waiting else 0

    def active(self, owner: str) -> Job | None:
        """``owner``'s job that is waiting or running, if any (one at a time per learner)."""
        with self._lock:
            return next((j for j in self._waiting + self._running if j.owner == owner), None)

    def stop(self) -> None:
        for _ in self._threads:
            self._queue.put(None)

    def _work(self) -> None:
        while (job := self._queue.get()) is not None:
            with self._lock:
                self._waiting.remove(job)
                self._running.append(job)
            job.started = time.monotonic()
            job.add("start")
            try:
                job.results = self._execute(job)
            except Exception as e:  # a failure of the lab, not of the learner's code: the page says so
                job.error = str(e) or type(e).__name__
            finally:
                job.finished = time.monotonic()
                with self._lock:
                    self._running.remove(job)
                job.add("done")
