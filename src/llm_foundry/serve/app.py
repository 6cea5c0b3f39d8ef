"""The FastAPI app: OpenAI-compatible endpoints, health, and the web chat page.

    GET  /                      the chat page (static files shipped in the package)
    GET  /health                liveness and load: {"status": "ok", "active": .., "queued": ..}
    GET  /v1/models             the one model this server holds
    POST /v1/chat/completions   chat, rendered with the chat template; streaming or not
    POST /v1/completions        raw text continuation (no template); streaming or not

Every ``/v1`` error has OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``.
Tool calls run inside the engine (the model writes a python block, the calculator
answers); the reply reports them as OpenAI ``tool_calls`` plus this server's
``tool_results`` (see docs/en/serving.md, "Tool calls").
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import socket
import time
import uuid
from pathlib import Path
from typing import Any, AsyncIterator, Callable

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..tokenizers.special import BOS, CHAT_TERMINATORS, EOS
from ..utils.errors import FoundryError
from .scheduler import Job, Scheduler
from .schemas import TOOL_NAME, ApiError, ChatCompletionRequest, CompletionRequest, parse_body, to_chat_messages

log = logging.getLogger("llm_foundry.serve")
STATIC = Path(__file__).parent / "static"
# The page loads nothing from anywhere but this server: it works offline, and injected markup cannot phone home.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
                               "connect-src 'self'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}
MAX_PROMPTS = 16  # prompts in one /v1/completions request (each is a job of n samples)
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_LINE_BREAKS = str.maketrans({"\u0085": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


class _AuthAndLog:
    """ASGI middleware: the ``/v1`` API key check and one log line per request.

    Plain ASGI rather than ``@app.middleware`` so streamed responses and client
    disconnects pass through untouched.
    """

    def __init__(self, app, api_key: str | None):
        self.app, self.api_key = app, api_key

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.monotonic(), [0]
        path = scope["path"]

        async def send_logged(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            if self.api_key and path.startswith("/v1") and scope["method"] != "OPTIONS":
                headers = dict(scope["headers"])
                auth = headers.get(b"authorization", b"").decode("latin-1")
                given = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
                if not secrets.compare_digest(given.encode(), self.api_key.encode()):
                    err = ApiError(401, "invalid or missing API key (send 'Authorization: Bearer KEY')",
                                   type="invalid_request_error", code="invalid_api_key")
                    return await JSONResponse(err.body(), status_code=401)(scope, receive, send_logged)
            await self.app(scope, receive, send_logged)
        finally:
            client = scope.get("client") or ("-", 0)
            log.info('%s "%s %s" %d %.3fs', client[0], scope["method"], path, status[0], time.monotonic() - start)


def create_app(engine, model_name: str, *, api_key: str | None = None, max_concurrency: int = 8,
               max_queue: int = 64):
    """Build the ASGI app (FastAPI inside the auth/logging middleware) around a loaded engine.

    Args:
        engine: the :class:`~llm_foundry.inference.engine.Engine` that decodes (owned by one worker
            thread from now on).
        model_name: the id clients pass as ``model`` and ``GET /v1/models`` lists.
        api_key: when set, every ``/v1`` request needs ``Authorization: Bearer <api_key>``.
        max_concurrency: requests decoded at the same time; more wait in a queue.
        max_queue: requests allowed to wait; one more is answered 429.
    """
    tokenizer = engine.tokenizer
    context = engine.model.cfg.max_seq_len
    created = int(time.time())
    state: dict[str, Any] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        state["scheduler"] = Scheduler(engine, max_concurrency, max_queue)
        try:
            yield
        finally:
            # uvicorn calls this after the in-flight responses finished (graceful shutdown).
            await asyncio.to_thread(state["scheduler"].close)

    app = FastAPI(title="llm-foundry", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.model_name = model_name

    def ids(*names: str) -> list[int]:
        return [i for n in names if (i := tokenizer.token_id(n)) is not None]

    chat_stop_ids = ids(*CHAT_TERMINATORS)
    text_stop_ids = ids(EOS, BOS)

    # ------------------------------------------------------------------ errors
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        if request.url.path.startswith("/v1"):
            kind = "not_found" if exc.status_code == 404 else "method_not_allowed" if exc.status_code == 405 else None
            msg = f"{request.method} {request.url.path}: {exc.detail}"
            return JSONResponse(ApiError(exc.status_code, msg, code=kind).body(), status_code=exc.status_code)
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unexpected error")
        err = ApiError(500, f"internal error: {type(exc).__name__}: {exc}", type="server_error")
        return JSONResponse(err.body(), status_code=500)

    # ------------------------------------------------------------------ helpers
    def check_model(name: str) -> None:
        if name != model_name:
            raise ApiError(404, f"the model '{name}' does not exist; this server has '{model_name}'",
                           param="model", code="model_not_found")

    def new_job(req, prompt_ids: list[int], stop_ids: list[int], queue: asyncio.Queue, offset: int = 0) -> Job:
        if len(prompt_ids) >= context:
            raise ApiError(400, f"this model's maximum context length is {context} tokens, but the prompt has "
                           f"{len(prompt_ids)}; shorten it", param="messages" if hasattr(req, "messages") else "prompt",
                           code="context_length_exceeded")
        # max_tokens beyond what the context can still hold is clipped; the reply then ends with "length".
        room = context - len(prompt_ids)
        limit = req.token_limit()
        return Job(prompt_ids=prompt_ids, n=req.n, max_tokens=min(limit or room, room), temperature=req.temperature,
                   top_p=req.top_p if req.top_p < 1 else None, top_k=req.top_k, stop=req.stop_list(), seed=req.seed,
                   stop_ids=stop_ids, loop=asyncio.get_running_loop(), queue=queue, offset=offset)

    def submit(jobs: list[Job]) -> None:
        sched: Scheduler = state["scheduler"]
        for k, job in enumerate(jobs):
            try:
                sched.submit(job)
            except ApiError:
                for j in jobs[:k]:
                    j.cancel()
                raise

    async def collect(request: Request, jobs: list[Job]) -> tuple[dict[int, list], dict[int, str], dict]:
        """Wait for every job of a non-streamed request; cancel them if the client leaves."""
        events: dict[int, list] = {}
        finish: dict[int, str] = {}
        usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        queue, ends, getter, checked = jobs[0].queue, 0, None, time.monotonic()
        try:
            while ends < len(jobs):
                # Every half second (items arriving or not) look whether the client is still there.
                if time.monotonic() - checked > 0.5:
                    checked = time.monotonic()
                    if await request.is_disconnected():
                        raise ApiError(499, "client closed the request")
                # Wait on one get() task across timeouts (never cancel it: that could drop an item).
                getter = getter or asyncio.ensure_future(queue.get())
                done, _ = await asyncio.wait({getter}, timeout=0.5)
                if not done:
                    continue
                item, getter = getter.result(), None
                if item[0] == "event":
                    events.setdefault(item[1], []).append((item[2], item[3]))
                elif item[0] == "finish":
                    finish[item[1]] = item[2]
                elif item[0] == "end":
                    ends += 1
                    for k, v in item[1].items():
                        usage[k] += v
                else:
                    raise ApiError(500, f"generation failed: {item[1]}", type="server_error")
        finally:
            if getter is not None:
                getter.cancel()
            for job in jobs:
                job.cancel()  # no-op for finished jobs; frees the slots of a departed client
        return events, finish, usage

    async def stream_events(jobs: list[Job]) -> AsyncIterator[tuple]:
        """Items of all jobs as they come; cancels the jobs when the consumer stops (disconnect).

        Text items already waiting are merged (same choice, back to back), so a client that
        reads slower than the model writes gets fewer, larger chunks instead of a backlog.
        """
        queue, ends = jobs[0].queue, 0
        try:
            while ends < len(jobs):
                batch = [await queue.get()]
                while not queue.empty():
                    batch.append(queue.get_nowait())
                merged: list[tuple] = []
                for item in batch:
                    prev = merged[-1] if merged else None
                    if (prev and item[0] == "event" and item[2] == "text" and prev[0] == "event"
                            and prev[2] == "text" and prev[1] == item[1]):
                        merged[-1] = ("event", item[1], "text", prev[3] + item[3])
                    else:
                        merged.append(item)
                for item in merged:
                    if item[0] == "end":
                        ends += 1
                    yield item
                    if item[0] == "error":
                        return
        finally:
            for job in jobs:
                job.cancel()

    def sse(obj: Any) -> str:
        # UTF-8 stays readable, but the characters some line readers take for line breaks
        # (U+0085, U+2028, U+2029; JSON leaves them raw) are escaped so an event stays one line.
        text = json.dumps(obj, ensure_ascii=False)
        return f"data: {text.translate(_LINE_BREAKS)}\n\n"

    def chunk_writer(rid: str, kind: str, created: int, model: str, include_usage: bool) -> Callable[..., str]:
        """``chunk(choices, usage=None)``: one streamed event of a reply (``usage`` only if asked for)."""
        def chunk(choices: list, usage: dict | None = None) -> str:
            body = {"id": rid, "object": kind, "created": created, "model": model, "system_fingerprint": None,
                    "choices": choices}
            if include_usage:
                body["usage"] = usage
            return sse(body)
        return chunk

    def log_done(kind: str, started: float, usage: dict, first: float | None) -> None:
        ttft = f", first token after {first - started:.3f}s" if first else ""
        log.info("%s: %d prompt + %d completion tokens in %.3fs%s", kind, usage["prompt_tokens"],
                 usage["completion_tokens"], time.monotonic() - started, ttft)

    # ------------------------------------------------------------------ routes
    @app.get("/health")
    async def health():
        sched = state.get("scheduler")
        return {"status": "ok", "model": model_name, **(sched.stats() if sched else {})}

    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{name:path}")
    async def get_model(name: str):
        check_model(name)
        return model_card()

    def model_card() -> dict:
        # context_length is an extension (vLLM calls it max_model_len) so clients can size their prompts.
        return {"id": model_name, "object": "model", "created": created, "owned_by": "llm-foundry",
                "context_length": context}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        req: ChatCompletionRequest = parse_body(await request.body(), ChatCompletionRequest)
        check_model(req.model)
        from ..data.chat import render_prompt

        messages = to_chat_messages(req.messages)
        try:
            prompt_ids = render_prompt(tokenizer, messages)
        except FoundryError as e:
            raise ApiError(400, f"messages: {e}", param="messages") from None
        queue: asyncio.Queue = asyncio.Queue()
        jobs = [new_job(req, prompt_ids, chat_stop_ids, queue)]
        submit(jobs)
        rid, now, started = f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), time.monotonic()
        call_ids: dict[int, list[str]] = {}

        def new_call_id(i: int) -> str:
            call_ids.setdefault(i, []).append(f"call_{uuid.uuid4().hex[:24]}")
            return call_ids[i][-1]

        if not req.stream:
            events, finish, usage = await collect(request, jobs)
            choices = []
            for i in range(req.n):
                text, calls, results = "", [], []
                for kind, value in events.get(i, []):
                    if kind == "text":
                        text += value
                    elif kind == "tool_call":
                        calls.append({"id": new_call_id(i), "type": "function",
                                      "function": {"name": TOOL_NAME, "arguments": json.dumps({"expression": value})}})
                    elif kind == "tool_result":
                        results.append({"tool_call_id": calls[-1]["id"] if calls else None, "content": value})
                message: dict[str, Any] = {"role": "assistant", "content": text}
                if calls:
                    message["tool_calls"] = calls
                    message["tool_results"] = results
                choices.append({"index": i, "message": message, "logprobs": None,
                                "finish_reason": finish.get(i, "stop")})
            log_done("chat", started, usage, None)
            return {"id": rid, "object": "chat.completion", "created": now, "model": model_name,
                    "system_fingerprint": None, "choices": choices, "usage": usage}

        include_usage = req.include_usage()
        chunk = chunk_writer(rid, "chat.completion.chunk", now, model_name, include_usage)

        def delta(i: int, d: dict, finish_reason: str | None = None) -> dict:
            return {"index": i, "delta": d, "logprobs": None, "finish_reason": finish_reason}

        async def body() -> AsyncIterator[str]:
            first = None
            yield chunk([delta(i, {"role": "assistant", "content": ""}) for i in range(req.n)])
            async for item in stream_events(jobs):
                if item[0] == "event":
                    _, i, kind, value = item
                    first = first or time.monotonic()
                    if kind == "text":
                        yield chunk([delta(i, {"content": value})])
                    elif kind == "tool_call":
                        call = {"index": len(call_ids.get(i, [])), "id": new_call_id(i), "type": "function",
                                "function": {"name": TOOL_NAME, "arguments": json.dumps({"expression": value})}}
                        yield chunk([delta(i, {"tool_calls": [call]})])
                    else:
                        last = call_ids.get(i, [None])[-1]
                        yield chunk([delta(i, {"tool_result": {"tool_call_id": last, "content": value}})])
                elif item[0] == "finish":
                    yield chunk([delta(item[1], {}, item[2])])
                elif item[0] == "end":
                    usage = item[1]
                    if include_usage:
                        yield chunk([], usage)
                    log_done("chat stream", started, usage, first)
                else:
                    yield sse(ApiError(500, f"generation failed: {item[1]}", type="server_error").body())
            yield "data: [DONE]\n\n"

        return StreamingResponse(body(), media_type="text/event-stream", headers=SSE_HEADERS)

    @app.post("/v1/completions")
    async def completions(request: Request):
        req: CompletionRequest = parse_body(await request.body(), CompletionRequest)
        check_model(req.model)
        prompts = req.prompt
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        if not prompts:
            raise ApiError(400, "prompt must not be empty", param="prompt")
        if len(prompts) > MAX_PROMPTS:
            raise ApiError(400, f"at most {MAX_PROMPTS} prompts per request", param="prompt")
        encoded = []
        for p in prompts:
            if isinstance(p, str):
                ids_ = tokenizer.encode(p)
            else:
                if any(not 0 <= t < tokenizer.vocab_size for t in p):
                    raise ApiError(400, f"prompt token ids must be in [0, {tokenizer.vocab_size})", param="prompt")
                ids_ = list(p)
            if not ids_:
                bos = tokenizer.token_id(BOS)
                ids_ = [bos] if bos is not None else tokenizer.encode("\n")
            encoded.append(ids_)
        queue: asyncio.Queue = asyncio.Queue()
        jobs = [new_job(req, p, text_stop_ids, queue, offset=k * req.n) for k, p in enumerate(encoded)]
        submit(jobs)
        rid, now, started = f"cmpl-{uuid.uuid4().hex}", int(time.time()), time.monotonic()
        total = len(jobs) * req.n
        echo = [tokenizer.decode(p) if req.echo else "" for p in encoded]

        if not req.stream:
            events, finish, usage = await collect(request, jobs)
            choices = [{"index": i, "text": echo[i // req.n] + "".join(v for k, v in events.get(i, []) if k == "text"),
                        "logprobs": None, "finish_reason": finish.get(i, "stop")} for i in range(total)]
            log_done("completion", started, usage, None)
            return {"id": rid, "object": "text_completion", "created": now, "model": model_name,
                    "system_fingerprint": None, "choices": choices, "usage": usage}

        include_usage = req.include_usage()
        chunk = chunk_writer(rid, "text_completion", now, model_name, include_usage)

        async def body() -> AsyncIterator[str]:
            first, usage_sum = None, {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
            if req.echo:
                yield chunk([{"index": i, "text": echo[i // req.n], "logprobs": None, "finish_reason": None}
                             for i in range(total)])
            async for item in stream_events(jobs):
                if item[0] == "event":
                    first = first or time.monotonic()
                    if item[2] == "text":
                        yield chunk([{"index": item[1], "text": item[3], "logprobs": None, "finish_reason": None}])
                elif item[0] == "finish":
                    yield chunk([{"index": item[1], "text": "", "logprobs": None, "finish_reason": item[2]}])
                elif item[0] == "end":
                    for k, v in item[1].items():
                        usage_sum[k] += v
                else:
                    yield sse(ApiError(500, f"generation failed: {item[1]}", type="server_error").body())
            if include_usage:
                yield chunk([], usage_sum)
            log_done("completion stream", started, usage_sum, first)
            yield "data: [DONE]\n\n"

        return StreamingResponse(body(), media_type="text/event-stream", headers=SSE_HEADERS)

    # ------------------------------------------------------------------ the web page
    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(STATIC / "index.html", headers=PAGE_HEADERS)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return _AuthAndLog(app, api_key)  # type: ignore[return-value]


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: a free one); a clear error when it is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        reason = e.strerror or e
        raise FoundryError(f"cannot listen on {host}:{port}: {reason}; pick another --port or --host") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def make_server(app, sock: socket.socket, *, log_level: str = "info", graceful_timeout: float | None = 60.0):
    """A uvicorn server for ``app`` on an already bound socket (run it with ``server.run(sockets=[sock])``).

    On Ctrl-C / SIGTERM uvicorn stops accepting connections, lets the responses in
    flight finish (up to ``graceful_timeout`` seconds), then the app stops its worker.
    """
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            super().handle_exit(sig, frame)
            # uvicorn re-raises the signal after its graceful shutdown, so the process would die of it
            # (exit -15, or a KeyboardInterrupt); a server stopped on purpose exits normally instead.
            getattr(self, "_captured_signals", []).clear()

    config = uvicorn.Config(app, log_level=log_level, access_log=False, timeout_graceful_shutdown=graceful_timeout,
                            lifespan="on", log_config=None)
    return Server(config)


class ServerThread:
    """Run the server in a background thread of this process (notebooks, tests, benchmarks).

    ``with ServerThread(app) as s: httpx.get(s.url + "/health")``; leaving the block
    stops it gracefully. Port 0 (the default) picks a free port.
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, startup_timeout: float = 30.0):
        import threading

        self.sock = bind_socket(host, port)
        self.host, self.port = host, self.sock.getsockname()[1]
        self.server = make_server(app, self.sock, log_level="warning")
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True,
                                       name="foundry-serve-http")
        self.thread.start()
        deadline = time.monotonic() + startup_timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise FoundryError(f"the server did not start on {host}:{self.port}")
            time.sleep(0.02)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def stop(self, timeout: float = 60.0) -> None:
        """Stop accepting connections, let in-flight requests finish, then stop."""
        self.server.should_exit = True
        self.thread.join(timeout)

    def __enter__(self) -> "ServerThread":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
