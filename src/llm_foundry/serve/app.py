"""The FastAPI app: OpenAI-compatible endpoints, health, and the web chat page.

    GET  /                      the chat page (static files shipped in the package)
    GET  /health                liveness and load: {"status": "ok", "active": .., "queued": ..}; 503 if the worker died
    GET  /v1/models             the one model this server holds
    POST /v1/chat/completions   chat, rendered with the chat template; streaming or not
    POST /v1/completions        raw text continuation (no template); streaming or not

The routes are thin: parse the body, submit jobs to the :class:`~.scheduler.Scheduler`,
send what the pure builders of :mod:`.builders` make of its items. Every ``/v1`` error has
OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``. Tool calls run inside the
engine (the model writes a python block, the calculator answers); the reply reports them as
OpenAI ``tool_calls`` plus this server's ``tool_results`` (see docs/en/serving.md, "Tool calls").
With a memory attached (``serve --memory``) the two ``/v1`` POST routes answer through
:mod:`.memory` instead, and ``/health`` reports the memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from pathlib import Path
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import builders
from .guard import Guard, HttpPolicy
from .memory import MemoryService, refuse_memory_field, reply
from .scheduler import Job, Scheduler
from .schemas import ApiError, ChatCompletionRequest, CompletionRequest, parse_body

log = logging.getLogger("llm_foundry.serve")
STATIC = Path(__file__).parent / "static"
# The page loads nothing from anywhere but this server: it works offline, and injected markup cannot phone home.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
                               "connect-src 'self'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


class PageFiles(StaticFiles):
    """The page's files, each with the page's headers: the CSP must hold for /static/index.html too."""

    def file_response(self, *args, **kwargs):
        response = super().file_response(*args, **kwargs)
        response.headers.update(PAGE_HEADERS)
        return response


# ---------------------------------------------------------------------------- a request's jobs, from the event loop
async def collect(request: Request, jobs: list[Job]) -> builders.Collected:
    """Wait for every job of a non-streamed request; cancel them if the client leaves."""
    got, queue, getter, checked = builders.Collected(), jobs[0].queue, None, time.monotonic()
    try:
        while got.ends < len(jobs):
            # Every half second (items arriving or not) look whether the client is still there.
            if time.monotonic() - checked > 0.5:
                checked = time.monotonic()
                if await request.is_disconnected():
                    raise ApiError(499, "client closed the request")
            # Wait on one get() task across timeouts (never cancel it: that could drop an item).
            getter = getter or asyncio.ensure_future(queue.get())
            done, _ = await asyncio.wait({getter}, timeout=0.5)
            if done:
                got.add(getter.result())
                getter = None
    finally:
        if getter is not None:
            getter.cancel()
        for job in jobs:
            job.cancel()  # no-op for finished jobs; frees the slots of a departed client
    return got


async def stream_items(jobs: list[Job]) -> AsyncIterator[tuple]:
    """Items of all jobs as they come (waiting text merged); cancels the jobs when the consumer stops."""
    queue, ends = jobs[0].queue, 0
    try:
        while ends < len(jobs):
            batch = [await queue.get()]
            while not queue.empty():
                batch.append(queue.get_nowait())
            for item in builders.merge_text(batch):
                if item[0] == "end":
                    ends += 1
                yield item
                if item[0] == "error":
                    return
    finally:
        for job in jobs:
            job.cancel()


def log_done(kind: str, started: float, usage: dict, first: float | None) -> None:
    ttft = f", first token after {first - started:.3f}s" if first else ""
    log.info("%s: %d prompt + %d completion tokens in %.3fs%s", kind, usage["prompt_tokens"],
             usage["completion_tokens"], time.monotonic() - started, ttft)


def event_stream(jobs: list[Job], stream: builders.ChatStream | builders.CompletionStream, kind: str,
                 started: float) -> StreamingResponse:
    """The server-sent events of a streamed reply: the builder's chunks for each item as it comes."""
    async def body() -> AsyncIterator[str]:
        first = None
        for text in stream.head():
            yield text
        async for item in stream_items(jobs):
            if item[0] == "event":
                first = first or time.monotonic()
            for text in stream.feed(item):
                yield text
        for text in stream.tail():
            yield text
        log_done(kind, started, stream.usage, first)

    return StreamingResponse(body(), media_type="text/event-stream", headers=builders.SSE_HEADERS)


# ---------------------------------------------------------------------------- the app
def create_app(engine, model_name: str, *, api_key: str | None = None, max_concurrency: int = 8,
               max_queue: int = 64, default_seed: int | None = None, policy: HttpPolicy | None = None,
               memory: MemoryService | None = None):
    """Build the ASGI app (FastAPI inside the transport :class:`~.guard.Guard`) around a loaded engine.

    Args:
        engine: the :class:`~llm_foundry.inference.engine.Engine` that decodes (owned by one worker
            thread from now on); None with ``memory``.
        model_name: the id clients pass as ``model`` and ``GET /v1/models`` lists.
        api_key: when set, every ``/v1`` request needs ``Authorization: Bearer <api_key>``.
        max_concurrency: sequences (a request's prompts x n) decoded at the same time; more wait in a queue.
        max_queue: sequences allowed to wait; a request that needs more room is answered 429.
        default_seed: the sampling seed of a request that gives none (None: such replies are not repeatable).
        policy: the transport limits (body size, deadlines, connections, hosts, origins); None: the defaults.
        memory: answer every request with this memory attached instead (``serve --memory``, see
            :mod:`.memory`; the app closes it when it stops).
    """
    if memory is not None:  # each request is a question in the memory's layout: no chat template needed
        tokenizer, context, chat, token_chars = memory.tokenizer, memory.context, True, 1
    else:
        tokenizer = engine.tokenizer
        context = engine.model.cfg.max_seq_len
        chat = builders.has_chat(tokenizer)  # a base model (char tokenizer) serves /v1/completions only
        token_chars = builders.max_token_chars(tokenizer)
    created = int(time.time())
    state: dict[str, Any] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        state["scheduler"] = Scheduler(engine, max_concurrency, max_queue) if memory is None else None
        try:
            yield
        finally:
            # uvicorn calls this after the in-flight responses finished (graceful shutdown).
            await asyncio.to_thread(state["scheduler"].close if memory is None else memory.close)

    app = FastAPI(title="llm-foundry", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.model_name = model_name

    def new_jobs(req, prompts: list[list[int]], rid: str) -> list[Job]:
        # One queue for the whole request; prompt k's samples are choices k*n .. k*n+n-1.
        queue: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        jobs = [Job(**builders.job_options(req, p, [], context, default_seed), loop=loop, queue=queue,
                    offset=k * req.n, rid=rid) for k, p in enumerate(prompts)]
        state["scheduler"].submit(jobs)
        return jobs

    # Parsing, converting, rendering and tokenizing cost CPU in proportion to the body: they run in a
    # worker thread, so a big request never stalls the event loop (health, streams, other clients).
    def prepare_chat(raw: bytes) -> tuple[ChatCompletionRequest, list[int]]:
        req: ChatCompletionRequest = parse_body(raw, ChatCompletionRequest)
        builders.check_model(req.model, model_name)
        refuse_memory_field(req)
        return req, builders.chat_prompt(tokenizer, req.messages, context, token_chars)

    def prepare_completion(raw: bytes) -> tuple[CompletionRequest, list[list[int]], list[str] | None]:
        req: CompletionRequest = parse_body(raw, CompletionRequest)
        builders.check_model(req.model, model_name)
        refuse_memory_field(req)
        prompts = builders.completion_prompts(tokenizer, req.prompt, context, token_chars)
        return req, prompts, [tokenizer.decode(p) for p in prompts] if req.echo else None

    # ------------------------------------------------------------------ errors
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        body = builders.http_error_body(request.method, request.url.path, exc.status_code, exc.detail)
        return JSONResponse(body, status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        # The details (exception text, paths) go to the log only; the client gets an id to quote.
        # The guard's id when there is one, so this line and the request's own log line share it.
        rid = getattr(request.state, "request_id", None) or f"req-{uuid.uuid4().hex[:16]}"
        log.error("unexpected error in request %s (%s %s)", rid, request.method, request.url.path,
                  exc_info=(type(exc), exc, exc.__traceback__))
        err = builders.internal_error(rid)
        return JSONResponse(err.body(), status_code=err.status)

    # ------------------------------------------------------------------ routes
    @app.get("/health")
    async def health():
        sched = state.get("scheduler")
        stats = memory.stats() if memory is not None else sched.stats() if sched else None
        body, status = builders.health(model_name, stats, chat)
        if memory is not None:
            body["memory"] = await asyncio.to_thread(memory.health)  # SQLite reads: off the event loop
        return JSONResponse(body, status_code=status)

    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": [builders.model_card(model_name, created, context, chat)]}

    @app.get("/v1/models/{name:path}")
    async def get_model(name: str):
        builders.check_model(name, model_name)
        return builders.model_card(model_name, created, context, chat)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        if memory is not None:
            return await reply(memory, request, True, model_name)
        req, prompt = await asyncio.to_thread(prepare_chat, await request.body())
        rid, now, started = f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), time.monotonic()
        jobs = new_jobs(req, [prompt], rid)
        if req.stream:
            stream = builders.ChatStream(rid, now, model_name, req.n, req.include_usage())
            return event_stream(jobs, stream, "chat stream", started)
        got = await collect(request, jobs)
        log_done("chat", started, got.usage, None)
        return builders.chat_completion(rid, now, model_name, req.n, got)

    @app.post("/v1/completions")
    async def completions(request: Request):
        if memory is not None:
            return await reply(memory, request, False, model_name)
        req, prompts, echo = await asyncio.to_thread(prepare_completion, await request.body())
        rid, now, started = f"cmpl-{uuid.uuid4().hex}", int(time.time()), time.monotonic()
        jobs = new_jobs(req, prompts, rid)
        if req.stream:
            stream = builders.CompletionStream(rid, now, model_name, req.n, req.include_usage(), echo)
            return event_stream(jobs, stream, "completion stream", started)
        got = await collect(request, jobs)
        log_done("completion", started, got.usage, None)
        return builders.text_completion(rid, now, model_name, req.n, len(prompts), got, echo)

    # ------------------------------------------------------------------ the web page
    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(STATIC / "index.html", headers=PAGE_HEADERS)

    app.mount("/static", PageFiles(directory=STATIC), name="static")
    return Guard(app, api_key, policy)  # type: ignore[return-value]
