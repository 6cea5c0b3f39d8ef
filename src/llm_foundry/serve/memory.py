"""Serving with a memory attached: ``foundry serve MODEL --memory MEM``.

Every ``/v1/chat/completions`` or ``/v1/completions`` request is one question, answered as
``foundry chat MODEL --memory MEM`` answers it, by the same object
(:class:`~llm_foundry.memory.ask.LiveAnswers`): the ``k`` best live entries retrieved, the
memory attached to the backbone, greedy decoding, the answer cut at the end of its line.
The question is a chat request's last user message (earlier messages are not read: the memory
modules learned one question at a time) or a completion request's prompt.

    request --(worker thread: parse, question)--> MemoryService.answer
            --(one memory thread: refresh the bank from the store, retrieve, decode)--> Answer
            --builders (the same wire format as the engine's replies)--> response

A request may carry this server's extension field ``"memory"``::

    {"enabled": true,          # false: the backbone alone (nothing retrieved)
     "show_retrieval": false}  # true: the response gets "retrieved": [{"id", "text", "score"}]

**Edits by other processes.** Before each answer the bank takes in the store's edits since
the previous one (``store.changed_since``), on the memory thread, so the event loop never waits
on SQLite or the encoder, and an entry added, updated or deleted with ``foundry memory …``
meanwhile is read (or never read again) by the next request.

**One answer at a time.** The memory is attached to the backbone's model by hooks while it
decodes, so answers run one after another on one thread; up to ``max_queue`` more requests
wait, beyond that a request gets 429, as the engine's scheduler answers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from ..memory.ask import Answer, LiveAnswers, prompt_of
from . import builders
from .scheduler import RETRY_AFTER_S
from .schemas import ApiError, ChatCompletionRequest, CompletionRequest, parse_body, to_chat_messages

if TYPE_CHECKING:
    from ..memory.pipeline import Memory

log = logging.getLogger("llm_foundry.serve")
DEFAULT_MAX_TOKENS = 256  # an answer's limit when the request gives none: `chat --memory`'s default
OPTIONS = ("enabled", "show_retrieval")


@dataclass
class MemoryOptions:
    """A request's ``"memory"`` field: read the memory or not, and show what was retrieved."""

    enabled: bool = True
    show_retrieval: bool = False


def memory_options(req: Any) -> MemoryOptions:
    """The ``"memory"`` field of a validated request (defaults when absent); 400 for a bad one."""
    raw = (req.model_extra or {}).get("memory")
    if raw is None:
        return MemoryOptions()
    if not isinstance(raw, dict):
        raise ApiError(400, "invalid value for 'memory': an object like {\"enabled\": true, \"show_retrieval\": "
                       "false}", param="memory", code="invalid_value")
    for key, value in raw.items():
        if key not in OPTIONS:
            raise ApiError(400, f"unknown field 'memory.{key}' (the fields are {', '.join(OPTIONS)})",
                           param=f"memory.{key}", code="invalid_value")
        if not isinstance(value, bool):
            raise ApiError(400, f"invalid value for 'memory.{key}': true or false, not {json.dumps(value)}",
                           param=f"memory.{key}", code="invalid_value")
    return MemoryOptions(**raw)


def refuse_memory_field(req: Any) -> None:
    """A ``"memory"`` field sent to a server without one is a 400, not silently an answer without memory."""
    if "memory" in (req.model_extra or {}):
        raise ApiError(400, "this server has no memory attached (start it with `foundry serve MODEL --memory MEM`)",
                       param="memory", code="invalid_value")


@dataclass
class Question:
    """One request, parsed: its question and how to answer it."""

    req: ChatCompletionRequest | CompletionRequest
    text: str
    options: MemoryOptions
    max_tokens: int
    prompt_tokens: int


class MemoryService:
    """The memory behind a server: :class:`LiveAnswers` on one thread, a bounded wait, health figures.

    Args:
        memory: the opened memory folder (the service owns it from now on: :meth:`close` closes it).
        max_queue: requests that may wait while one is answered; more get 429.
    """

    def __init__(self, memory: Memory, max_queue: int = 64):
        self.memory = memory
        self.live = LiveAnswers(memory.model, memory.store, memory.cfg.modules.k, DEFAULT_MAX_TOKENS,
                                memory.cfg.modules.hybrid)
        self.tokenizer = memory.model.backbone.tokenizer
        self.context = memory.model.backbone.context
        self.max_queue = max(0, int(max_queue))
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="foundry-serve-memory")
        self.lock = threading.Lock()  # the counters below, read by /health from another thread
        self.waiting = self.active = self.completed = 0

    # ------------------------------------------------------------------ requests
    def question(self, raw: bytes, chat: bool, model_name: str) -> Question:
        """Parse a request body into its question (runs in a worker thread: tokenizing costs CPU).

        Raises:
            ApiError: 400 for a bad body, ``n`` other than 1, no question, a prompt that is not one
                text, or a question too long for the backbone's context; 404 for another model.
        """
        req = parse_body(raw, ChatCompletionRequest if chat else CompletionRequest)
        builders.check_model(req.model, model_name)
        options = memory_options(req)
        if req.n != 1:
            raise ApiError(400, "with a memory attached, answers are greedy: n must be 1", param="n",
                           code="invalid_value")
        if chat:
            text, param = to_chat_messages(req.messages)[-1]["content"], "messages"
        else:
            prompt = req.prompt[0] if isinstance(req.prompt, list) and len(req.prompt) == 1 else req.prompt
            if not isinstance(prompt, str):
                raise ApiError(400, "with a memory attached, the prompt is one question: a string", param="prompt")
            text, param = prompt, "prompt"
        if not isinstance(text, str) or not text.strip():
            raise ApiError(400, "the question is empty", param=param)
        n = len(self.tokenizer.encode(prompt_of(text)))
        if n >= self.context:
            raise ApiError(400, f"the backbone's context is {self.context} tokens, but the question has {n}; "
                           "shorten it", param=param, code="context_length_exceeded")
        given = req.model_fields_set & {"max_tokens", "max_completion_tokens"}
        limit = (req.token_limit() if given else None) or DEFAULT_MAX_TOKENS
        return Question(req, text, options, min(limit, self.context - n), n)

    async def answer(self, q: Question) -> Answer:
        """The answer, computed on the memory thread; 429 while ``max_queue`` requests already wait."""
        with self.lock:
            if self.waiting >= self.max_queue + 1:
                raise ApiError(429, f"the server is busy ({self.waiting} questions waiting or being answered); "
                               "retry shortly", type="rate_limit_error", code="server_overloaded",
                               headers={"Retry-After": str(RETRY_AFTER_S)})
            self.waiting += 1
        try:
            return await asyncio.wrap_future(self.executor.submit(self._answer, q))
        finally:
            with self.lock:
                self.waiting -= 1

    def _answer(self, q: Question) -> Answer:
        with self.lock:
            self.active = 1
        try:
            return self.live.ask(q.text, q.options.enabled, q.max_tokens)
        finally:
            with self.lock:
                self.active = 0
                self.completed += 1

    # ------------------------------------------------------------------ health and shutdown
    def stats(self) -> dict[str, Any]:
        """Load figures for ``/health``, in the scheduler's terms (one question decodes at a time)."""
        with self.lock:
            return {"active": self.active, "queued": self.waiting - self.active, "completed": self.completed,
                    "max_concurrency": 1, "max_queue": self.max_queue}

    def health(self) -> dict[str, Any]:
        """``/health``'s ``memory``: live entries and the store's version now (a read of SQLite: call it
        off the event loop), the version the last answer read, and ``k``."""
        store = self.memory.store
        return {"entries": len(store), "version": store.version, "read_version": self.live.version,
                "k": self.live.k}

    def close(self) -> None:
        """Finish the answers in flight, then close the store."""
        self.executor.shutdown(wait=True)
        self.memory.close()


# ---------------------------------------------------------------------------- responses
def retrieved(answer: Answer) -> list[dict[str, Any]]:
    """The entries an answer read, best first, as the response's ``retrieved``."""
    return [{"id": i, "text": t, "score": s} for i, t, s in zip(answer.retrieved, answer.texts, answer.scores)]


def _items(q: Question, answer: Answer, tokenizer) -> list[tuple]:
    """The answer as the scheduler's items, so the builders make its body or stream as for any reply."""
    tokens = len(tokenizer.encode(answer.answer)) if answer.answer else 0
    usage = {"prompt_tokens": q.prompt_tokens, "completion_tokens": tokens, "total_tokens": q.prompt_tokens + tokens}
    text = [("event", 0, "text", answer.answer)] if answer.answer else []
    return text + [("finish", 0, "length" if tokens >= q.max_tokens else "stop"), ("end", usage)]


async def reply(service: MemoryService, request: Request, chat: bool, model_name: str):
    """The response to one chat or completion request on a server with a memory."""
    started = time.monotonic()
    q = await asyncio.to_thread(service.question, await request.body(), chat, model_name)
    answer = await service.answer(q)
    rid, now = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}", int(time.time())
    items = _items(q, answer, service.tokenizer)
    echo = [q.text] if not chat and q.req.echo else None
    log.info("memory answer: %d prompt + %d completion tokens in %.3fs, read %s%s", q.prompt_tokens,
             items[-1][1]["completion_tokens"], time.monotonic() - started, answer.retrieved or "nothing",
             "" if q.options.enabled else " (memory off)")
    if q.req.stream:
        stream = (builders.ChatStream(rid, now, model_name, 1, q.req.include_usage()) if chat else
                  builders.CompletionStream(rid, now, model_name, 1, q.req.include_usage(), echo))
        events = stream.head()
        if q.options.show_retrieval:  # first, in a chunk of its own: what the answer below read
            events.append(builders.sse({"id": rid, "object": stream.object, "created": now, "model": model_name,
                                        "system_fingerprint": None, "choices": [], "retrieved": retrieved(answer)}))
        for item in items:
            events += stream.feed(item)
        events += stream.tail()
        return StreamingResponse(iter(events), media_type="text/event-stream", headers=builders.SSE_HEADERS)
    got = builders.Collected()
    for item in items:
        got.add(item)
    body = (builders.chat_completion(rid, now, model_name, 1, got) if chat else
            builders.text_completion(rid, now, model_name, 1, 1, got, echo))
    if q.options.show_retrieval:
        body["retrieved"] = retrieved(answer)
    return JSONResponse(body)
