"""Module 14: a chat server, rebuilt — OpenAI's chat API over HTTP, streamed as server-sent events,
and a minimal page to talk to it.

Our server is ``src/llm_foundry/serve/``: ``schemas.py`` validates a request body and answers every
mistake with a 400 in OpenAI's error shape, ``builders.py`` turns the engine's output into
``chat.completion`` bodies and ``chat.completion.chunk`` events (``sse``, ``ChatStream``), ``app.py``
wires the routes (``POST /v1/chat/completions``, ``GET /`` the page) and ``scheduler.py`` shares one
model among many clients. Here you write the same wire format around any ``chat`` function — the
model, a tiny one, or an echo — so that the real ``openai`` client can talk to your server.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any, Callable, Iterator

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse

# chat(messages, max_tokens, temperature) yields the reply's text piece by piece (about one token each).
ChatFn = Callable[[list[dict], int, float], Iterator[str]]
ROLES = ("system", "user", "assistant")
DEFAULT_MAX_TOKENS = 256
DONE = "data: [DONE]\n\n"


class ApiError(Exception):
    """An error answered with HTTP ``status`` and OpenAI's error body (as ours in serve/schemas.py)."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type

    def body(self) -> dict:
        """``{"error": {"message", "type", "param", "code"}}`` — what OpenAI's clients parse."""
        # BEGIN SOLUTION error_body
        # STUB: # one key, "error", holding the four fields (param and code may be None)
        # STUB: raise NotImplementedError("error_body")
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        # END SOLUTION


def parse_request(body: Any) -> dict:
    """A decoded JSON body -> ``{"model", "messages", "max_tokens", "temperature", "stream"}``.

    Rules (as our serve/schemas.py): the body is an object; ``model`` a string; ``messages`` a non-empty
    list of objects, each with ``role`` in ``ROLES`` and a string ``content``, the last from the user;
    ``max_tokens`` an integer ≥ 1 (default ``DEFAULT_MAX_TOKENS``); ``temperature`` a number in [0, 2]
    (default 1.0); ``stream`` true or false (default false). JSON's true is not the number 1.

    Raises:
        ApiError: 400 naming the field (``param``) for the first rule broken.
    """
    # BEGIN SOLUTION parse_request
    # STUB: # check each field in the order of the docstring; raise ApiError(400, "...", param="<field>") on the first problem
    # STUB: raise NotImplementedError("parse_request")
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str):
        raise ApiError(400, "model must be a string", param="model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list", param="messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise ApiError(400, f"messages[{i}] must have a role ({', '.join(ROLES)}) and a string content",
                           param="messages")
    if messages[-1]["role"] != "user":
        raise ApiError(400, "the last message must be the user's", param="messages")

    def number(name: str, default, kinds: tuple, lo: float, hi: float):
        v = body.get(name)
        if v is None:
            return default
        # bool is an int in Python: a JSON true is a client's mistake, not 1
        if isinstance(v, bool) or not isinstance(v, kinds) or not lo <= v <= hi:
            raise ApiError(400, f"{name} must be a number in [{lo}, {hi}], got {json.dumps(v)}", param=name)
        return v

    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, "stream must be true or false", param="stream")
    return {"model": model, "messages": messages,
            "max_tokens": number("max_tokens", DEFAULT_MAX_TOKENS, (int,), 1, 1_000_000),
            "temperature": float(number("temperature", 1.0, (int, float), 0.0, 2.0)), "stream": stream}
    # END SOLUTION


def sse(obj: Any) -> str:
    """One server-sent event carrying ``obj`` as JSON: ``data: <json>`` and a blank line."""
    # BEGIN SOLUTION sse
    # STUB: raise NotImplementedError("sse")
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"
    # END SOLUTION


def chunk(rid: str, created: int, model: str, delta: dict, finish_reason: str | None = None) -> dict:
    """One ``chat.completion.chunk`` of a streamed reply: the reply's id, time and model, and one
    choice (index 0) with its ``delta`` and ``finish_reason`` (None until the last chunk)."""
    # BEGIN SOLUTION chunk
    # STUB: raise NotImplementedError("chunk")
    return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}
    # END SOLUTION


def completion(rid: str, created: int, model: str, text: str, finish_reason: str) -> dict:
    """The ``chat.completion`` body of a reply that is not streamed: one choice (index 0) whose
    ``message`` is the assistant's ``text``."""
    # BEGIN SOLUTION completion
    # STUB: raise NotImplementedError("completion")
    return {"id": rid, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": finish_reason}]}
    # END SOLUTION


def finish_reason(pieces: int, max_tokens: int) -> str:
    """``"length"`` when the reply was cut at ``max_tokens`` pieces, else ``"stop"`` (given)."""
    return "length" if pieces >= max_tokens else "stop"


def stream_events(rid: str, created: int, model: str, pieces: Iterator[str], max_tokens: int) -> Iterator[str]:
    """The events of a streamed reply, each sent as soon as its piece exists: a first chunk with
    ``{"role": "assistant", "content": ""}``, one ``{"content": piece}`` chunk per non-empty piece, a
    last chunk with an empty delta and the finish reason, then ``data: [DONE]``."""
    # BEGIN SOLUTION stream
    # STUB: raise NotImplementedError("stream")
    yield sse(chunk(rid, created, model, {"role": "assistant", "content": ""}))
    count = 0
    for piece in pieces:  # one at a time: a client sees each piece while the next is being made
        count += 1
        if piece:
            yield sse(chunk(rid, created, model, {"content": piece}))
    yield sse(chunk(rid, created, model, {}, finish_reason(count, max_tokens)))
    yield DONE
    # END SOLUTION


# The page: a form, the conversation so far, and a reader of the event stream (given). The reply is
# put in with textContent — never innerHTML: the model's text is data, and markup in it must not run.
PAGE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>llm-foundry lab chat</title>
<style>body{font-family:sans-serif;max-width:42rem;margin:2rem auto}#log p{white-space:pre-wrap}
.user{color:#246}.assistant{color:#333}</style></head>
<body>
<h1>Chat</h1>
<div id="log"></div>
<form id="form"><textarea id="input" rows="3" cols="60" placeholder="Message"></textarea>
<button type="submit">Send</button></form>
<script>
const messages = [];
const log = document.getElementById("log");
function line(role, text) {
  const p = document.createElement("p");
  p.className = role;
  p.textContent = text;
  log.appendChild(p);
  return p;
}
document.getElementById("form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const input = document.getElementById("input");
  messages.push({role: "user", content: input.value});
  line("user", input.value);
  input.value = "";
  const out = line("assistant", "");
  const r = await fetch("/v1/chat/completions", {method: "POST", headers: {"Content-Type": "application/json"},
    body: JSON.stringify({model: "lab", messages: messages, stream: true})});
  if (!r.ok) { out.textContent = (await r.json()).error.message; messages.pop(); return; }
  const reader = r.body.getReader(), decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, {stream: true});
    let end;
    while ((end = buffer.indexOf("\\n\\n")) >= 0) {  // an event ends with a blank line
      const data = buffer.slice(0, end).replace(/^data: /, "");
      buffer = buffer.slice(end + 2);
      if (data === "[DONE]") continue;
      const delta = JSON.parse(data).choices[0].delta;
      if (delta.content) out.textContent += delta.content;
    }
  }
  messages.push({role: "assistant", content: out.textContent});
});
</script>
</body>
</html>
"""


def create_app(chat: ChatFn) -> FastAPI:
    """The app: ``POST /v1/chat/completions`` (streamed or not) answered by ``chat``, ``GET /`` the page.

    Every ``ApiError`` becomes its status and OpenAI's error body; a body that is not JSON is a 400.
    The server holds one model and answers to any ``model`` name, echoing it back.
    """
    app = FastAPI(title="llm-foundry lab", docs_url=None, redoc_url=None, openapi_url=None)
    # BEGIN SOLUTION routes
    # STUB: # 1. an exception handler: ApiError -> JSONResponse(exc.body(), status_code=exc.status)
    # STUB: # 2. GET / -> the page; 3. POST /v1/chat/completions: parse, call chat, stream or collect
    # STUB: raise NotImplementedError("routes")
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.get("/")
    async def page():
        return HTMLResponse(PAGE)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        try:
            body = json.loads(await request.body())
        except ValueError:  # also bad UTF-8
            raise ApiError(400, "the body is not valid JSON") from None
        req = parse_request(body)
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        pieces = chat(req["messages"], req["max_tokens"], req["temperature"])
        if req["stream"]:
            # A plain iterator: Starlette pulls it in a worker thread, so a slow model never blocks the server.
            return StreamingResponse(stream_events(rid, created, req["model"], pieces, req["max_tokens"]),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        parts = await asyncio.to_thread(list, pieces)  # the model works off the event loop
        return completion(rid, created, req["model"], "".join(parts), finish_reason(len(parts), req["max_tokens"]))
    # END SOLUTION
    return app
