"""The OpenAI wire format, as pure functions: validated request + engine results -> response bodies.

Nothing here needs a server, an event loop or a model: a tokenizer turns messages and
prompts into token ids, and the scheduler's items (see :class:`~.scheduler.Job`) become
replies, streamed chunks and error bodies. The routes in :mod:`.app` only parse, submit and send.

Scheduler items, as the builders read them: ``("event", choice, kind, text)`` with kind
``text``, ``tool_call`` or ``tool_result``; ``("finish", choice, reason)``; ``("end", usage)``
once per job; ``("error", message[, status])`` (status 500 unless given).
"""

from __future__ import annotations

import json
import secrets
import uuid
from typing import Any, Callable

from ..tokenizers.special import document_start
from ..utils.errors import FoundryError
from .schemas import TOOL_NAME, ApiError, to_chat_messages

MAX_PROMPTS = 16  # prompts in one /v1/completions request (each is a job of n samples)
DONE = "data: [DONE]\n\n"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # a stream's response headers
# Characters some line readers take for line breaks although JSON leaves them raw.
_LINE_BREAKS = str.maketrans({"\u0085": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


# ---------------------------------------------------------------------------- requests -> jobs
def check_model(name: str, served: str) -> None:
    """Raise a 404 :class:`ApiError` unless ``name`` is the model this server holds."""
    if name != served:
        raise ApiError(404, f"the model '{name}' does not exist; this server has '{served}'",
                       param="model", code="model_not_found")


def has_chat(tokenizer) -> bool:
    """Whether ``tokenizer`` has the chat tokens (a char tokenizer built from plain text has not)."""
    from ..data.chat import chat_token_ids

    try:
        chat_token_ids(tokenizer)
    except FoundryError:
        return False
    return True


def max_token_chars(tokenizer) -> int:
    """The most characters one token stands for: a text of ``c`` characters is at least ``c / this`` tokens.

    Computed once per server (one decode per vocabulary entry), so an impossible prompt is refused
    by its length alone, before the work of tokenizing it.
    """
    return max([1] + [len(tokenizer.decode([i], skip_special=False)) for i in range(tokenizer.vocab_size)])


def check_length(chars: int, context: int, token_chars: int, param: str) -> None:
    """Raise 400 ``context_length_exceeded`` for a text of ``chars`` characters that cannot fit in the context.

    Args:
        chars: the prompt's characters (all messages' text together).
        context: the model's context length in tokens.
        token_chars: :func:`max_token_chars` of the tokenizer.
        param: the field to name (``messages`` or ``prompt``).
    """
    if chars > context * token_chars:
        raise ApiError(400, f"this model's maximum context length is {context} tokens, but the {param} has "
                       f"{chars} characters, more than that many tokens can hold; shorten it", param=param,
                       code="context_length_exceeded")


def chat_prompt(tokenizer, messages: list[dict[str, Any]], context: int | None = None,
                token_chars: int = 1) -> list[int]:
    """OpenAI chat messages -> the prompt's token ids, rendered with the chat template.

    Args:
        tokenizer: the served model's tokenizer.
        messages: the request's ``messages``.
        context: the model's context length; with it, messages too long to fit are refused before rendering.
        token_chars: :func:`max_token_chars` of the tokenizer.

    Raises:
        ApiError: 400 when the model has no chat template, the messages break the chat rules, or they
            cannot fit in the context.
    """
    from ..data.chat import render_prompt

    if not has_chat(tokenizer):
        raise ApiError(400, "this model has no chat template; use /v1/completions", param="messages",
                       code="chat_not_supported")
    chat = to_chat_messages(messages)
    if context is not None:
        chars = sum(len(m["content"]) if isinstance(m["content"], str) else sum(len(p["text"]) for p in m["content"])
                    for m in chat)
        check_length(chars, context, token_chars, "messages")
    try:
        return render_prompt(tokenizer, chat)
    except FoundryError as e:
        raise ApiError(400, f"messages: {e}", param="messages") from None


def completion_prompts(tokenizer, prompt: str | list[str] | list[int] | list[list[int]], context: int | None = None,
                       token_chars: int = 1) -> list[list[int]]:
    """A completions ``prompt`` (text, texts, token ids or lists of them) -> one list of token ids per prompt.

    An empty prompt starts from BOS (or a newline, for a tokenizer without one), so the model has a position
    to predict from. With ``context`` (and ``token_chars``, see :func:`chat_prompt`) a text too long to fit
    is refused before it is tokenized.

    Raises:
        ApiError: 400 for no prompt, more than :data:`MAX_PROMPTS`, a token id outside the vocabulary (or not
            an integer), or a prompt that cannot fit in the context.
    """
    prompts: list = [prompt] if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)) else list(prompt)
    if not prompts:
        raise ApiError(400, "prompt must not be empty", param="prompt")
    if len(prompts) > MAX_PROMPTS:
        raise ApiError(400, f"at most {MAX_PROMPTS} prompts per request", param="prompt")
    if context is not None:
        for p in prompts:
            check_length(len(p), context, token_chars if isinstance(p, str) else 1, "prompt")
    encoded = []
    for p in prompts:
        if isinstance(p, str):
            ids = tokenizer.encode(p)
        else:
            # (bool is an int in Python, but a JSON true is no token id)
            if any(isinstance(t, bool) or not 0 <= t < tokenizer.vocab_size for t in p):
                raise ApiError(400, f"prompt token ids must be in [0, {tokenizer.vocab_size})", param="prompt")
            ids = list(p)
        encoded.append(ids or document_start(tokenizer))
    return encoded


def job_options(req, prompt_ids: list[int], stop_ids: list[int], context: int,
                default_seed: int | None = None) -> dict[str, Any]:
    """The :class:`~.scheduler.Job` fields a request sets for one prompt (all but its channel back).

    Args:
        req: a validated :class:`~.schemas.ChatCompletionRequest` or :class:`~.schemas.CompletionRequest`.
        prompt_ids: the prompt's tokens.
        stop_ids: tokens that end a sample besides the engine's terminator set (``CHAT_TERMINATORS``).
        context: the model's context length.
        default_seed: the seed of a request that gives none (``foundry serve --seed``).

    Raises:
        ApiError: 400 ``context_length_exceeded`` when the prompt leaves no room for a reply.
    """
    if len(prompt_ids) >= context:
        raise ApiError(400, f"this model's maximum context length is {context} tokens, but the prompt has "
                       f"{len(prompt_ids)}; shorten it", param="messages" if hasattr(req, "messages") else "prompt",
                       code="context_length_exceeded")
    # max_tokens beyond what the context can still hold is clipped; the reply then ends with "length".
    room = context - len(prompt_ids)
    return dict(prompt_ids=prompt_ids, n=req.n, max_tokens=min(req.token_limit() or room, room),
                temperature=req.temperature, top_p=req.top_p if req.top_p < 1 else None, top_k=req.top_k,
                stop=req.stop_list(), seed=default_seed if req.seed is None else req.seed, stop_ids=stop_ids)


# ---------------------------------------------------------------------------- small bodies and errors
def model_card(name: str, created: int, context: int, chat: bool = True) -> dict[str, Any]:
    """The ``GET /v1/models`` entry of the served model.

    ``context_length`` is an extension (vLLM calls it ``max_model_len``) so clients can size their prompts;
    ``chat`` (another) is false for a base model without a chat template, which serves ``/v1/completions`` only.
    """
    return {"id": name, "object": "model", "created": created, "owned_by": "llm-foundry", "context_length": context,
            "chat": chat}


def health(name: str, stats: dict[str, Any] | None, chat: bool = True) -> tuple[dict[str, Any], int]:
    """The ``GET /health`` body and status: liveness plus the scheduler's load figures (none before it started).

    Status 200 with ``"status": "ok"`` while the worker runs; 503 with ``"status": "error"`` (and the reason)
    once it has died, so a load balancer or supervisor sees a server that can no longer answer.
    """
    stats = dict(stats or {})
    error = stats.pop("error", None)
    body = {"status": "error" if error else "ok", "model": name, "chat": chat, **stats}
    if error:
        body["error"] = error
    return body, 503 if error else 200


def api_key_error(method: str, path: str, authorization: str, api_key: str | None) -> ApiError | None:
    """The 401 for a ``/v1`` request without ``Authorization: Bearer <api_key>``; None when it may pass.

    The page, its files and ``/health`` stay open, and so do CORS preflights (``OPTIONS``).
    """
    if not api_key or not path.startswith("/v1") or method == "OPTIONS":
        return None
    given = authorization[7:].strip() if authorization[:7].lower() == "bearer " else ""
    if secrets.compare_digest(given.encode(), api_key.encode()):  # constant time: the key cannot be guessed by timing
        return None
    return ApiError(401, "invalid or missing API key (send 'Authorization: Bearer KEY')",
                    type="invalid_request_error", code="invalid_api_key")


def http_error_body(method: str, path: str, status: int, detail: str) -> dict[str, Any]:
    """The body of a routing error (unknown path, wrong method): OpenAI's shape under ``/v1``, else FastAPI's."""
    if not path.startswith("/v1"):
        return {"detail": detail}
    code = "not_found" if status == 404 else "method_not_allowed" if status == 405 else None
    return ApiError(status, f"{method} {path}: {detail}", code=code).body()


def internal_error(request_id: str) -> ApiError:
    """The 500 answered for an exception nothing else handled.

    The exception's text stays in the server log under ``request_id`` (it may name paths or
    internals); the client gets that id to quote, nothing else.
    """
    return ApiError(500, f"internal server error (request {request_id}; the server log has the details)",
                    type="server_error")


def generation_error(message: str, status: int = 500) -> ApiError:
    """The error for a request the engine failed on (the scheduler's ``error`` item, already free of internals)."""
    return ApiError(status, message, type="server_error", code="worker_failed" if status == 503 else None)


# ---------------------------------------------------------------------------- non-streamed replies
def add_usage(total: dict[str, int], usage: dict[str, int]) -> None:
    """Add one job's token counts to a request's (prompts counted once each, samples all)."""
    for k, v in usage.items():
        total[k] = total.get(k, 0) + v


def no_usage() -> dict[str, int]:
    """The token counts of a request before any of its jobs ended."""
    return {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}


class CallIds:
    """The ids of each choice's tool calls, in order: a tool result belongs to the call before it.

    Args:
        make: a new id each call (default: ``call_`` + 24 random hex digits, as OpenAI's look).
    """

    def __init__(self, make: Callable[[], str] | None = None):
        self.make = make or (lambda: f"call_{uuid.uuid4().hex[:24]}")
        self.ids: dict[int, list[str]] = {}

    def new(self, choice: int) -> str:
        self.ids.setdefault(choice, []).append(self.make())
        return self.ids[choice][-1]

    def count(self, choice: int) -> int:
        return len(self.ids.get(choice, []))

    def last(self, choice: int) -> str | None:
        return self.ids.get(choice, [None])[-1]


def tool_call(call_id: str, expression: str) -> dict[str, Any]:
    """A calculator call the engine ran, as an OpenAI ``tool_calls`` entry."""
    return {"id": call_id, "type": "function",
            "function": {"name": TOOL_NAME, "arguments": json.dumps({"expression": expression})}}


class Collected:
    """The scheduler's items of one non-streamed request, gathered per choice.

    Attributes:
        events: per choice, its ``(kind, text)`` events in order.
        finish: per choice, its finish reason.
        usage: token counts summed over the request's jobs.
        ends: jobs that have ended.
    """

    def __init__(self):
        self.events: dict[int, list[tuple[str, str]]] = {}
        self.finish: dict[int, str] = {}
        self.usage = no_usage()
        self.ends = 0

    def add(self, item: tuple) -> None:
        """Take one item; an ``error`` item raises the 500 the client gets."""
        if item[0] == "event":
            self.events.setdefault(item[1], []).append((item[2], item[3]))
        elif item[0] == "finish":
            self.finish[item[1]] = item[2]
        elif item[0] == "end":
            self.ends += 1
            add_usage(self.usage, item[1])
        else:
            raise generation_error(*item[1:])


def chat_completion(rid: str, created: int, model: str, n: int, got: Collected,
                    call_ids: CallIds | None = None) -> dict[str, Any]:
    """The ``chat.completion`` body of a non-streamed chat request.

    Each choice's ``content`` is its text joined; the calculator calls the engine ran become
    ``tool_calls``, and their results this server's ``tool_results`` extension.

    Args:
        rid: the reply's id (``chatcmpl-...``).
        created: its Unix time.
        model: the served model's id.
        n: samples asked for (choices ``0 .. n-1``).
        got: the request's items, gathered.
        call_ids: makes the tool calls' ids (default: random ones).
    """
    call_ids = call_ids or CallIds()
    choices = []
    for i in range(n):
        text, calls, results = "", [], []
        for kind, value in got.events.get(i, []):
            if kind == "text":
                text += value
            elif kind == "tool_call":
                calls.append(tool_call(call_ids.new(i), value))
            elif kind == "tool_result":
                results.append({"tool_call_id": calls[-1]["id"] if calls else None, "content": value})
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if calls:
            message["tool_calls"] = calls
            message["tool_results"] = results
        choices.append({"index": i, "message": message, "logprobs": None, "finish_reason": got.finish.get(i, "stop")})
    return {"id": rid, "object": "chat.completion", "created": created, "model": model, "system_fingerprint": None,
            "choices": choices, "usage": got.usage}


def text_completion(rid: str, created: int, model: str, n: int, prompts: int, got: Collected,
                    echo: list[str] | None = None) -> dict[str, Any]:
    """The ``text_completion`` body of a non-streamed completions request.

    Choice ``i`` is sample ``i % n`` of prompt ``i // n``; with ``echo`` (one text per prompt)
    that prompt's text comes first.

    Args:
        rid, created, model, n, got: as for :func:`chat_completion` (``rid`` is ``cmpl-...``).
        prompts: how many prompts the request had.
        echo: the prompts' texts, when the client asked for ``echo``.
    """
    total = prompts * n
    choices = [{"index": i, "text": (echo[i // n] if echo else "") +
                "".join(v for k, v in got.events.get(i, []) if k == "text"),
                "logprobs": None, "finish_reason": got.finish.get(i, "stop")} for i in range(total)]
    return {"id": rid, "object": "text_completion", "created": created, "model": model, "system_fingerprint": None,
            "choices": choices, "usage": got.usage}


# ---------------------------------------------------------------------------- streams
def sse(obj: Any) -> str:
    """One server-sent event carrying ``obj`` as JSON.

    UTF-8 stays readable, but U+0085, U+2028 and U+2029 (which JSON leaves raw and some line
    readers split on) are escaped, so an event always stays one line.
    """
    return f"data: {json.dumps(obj, ensure_ascii=False).translate(_LINE_BREAKS)}\n\n"


def merge_text(items: list[tuple]) -> list[tuple]:
    """Join text events of the same choice that arrive back to back into one.

    A client that reads slower than the model writes then gets fewer, larger chunks instead of a backlog.
    """
    merged: list[tuple] = []
    for item in items:
        prev = merged[-1] if merged else None
        if (prev and item[0] == "event" and item[2] == "text" and prev[0] == "event" and prev[2] == "text"
                and prev[1] == item[1]):
            merged[-1] = ("event", item[1], "text", prev[3] + item[3])
        else:
            merged.append(item)
    return merged


class _Stream:
    """The chunks of one streamed reply: ``head()``, then ``feed(item)`` per scheduler item, then ``tail()``.

    Each returns the server-sent events to send, in order. ``usage`` sums the jobs' token counts.

    Args:
        rid, created, model, n: as for :func:`chat_completion`.
        include_usage: the client asked for ``stream_options.include_usage``.
    """

    object = ""

    def __init__(self, rid: str, created: int, model: str, n: int, include_usage: bool):
        self.rid, self.created, self.model, self.n = rid, created, model, n
        self.include_usage = include_usage
        self.usage = no_usage()

    def chunk(self, choices: list, usage: dict | None = None) -> str:
        """One streamed event of the reply (``usage`` is a field only when the client asked for it)."""
        body = {"id": self.rid, "object": self.object, "created": self.created, "model": self.model,
                "system_fingerprint": None, "choices": choices}
        if self.include_usage:
            body["usage"] = usage
        return sse(body)

    def _end(self, usage: dict[str, int]) -> list[str]:
        add_usage(self.usage, usage)
        return []

    def head(self) -> list[str]:
        return []

    def feed(self, item: tuple) -> list[str]:
        if item[0] == "end":
            return self._end(item[1])
        if item[0] == "error":
            return [sse(generation_error(*item[1:]).body())]
        return self._event(item)

    def _event(self, item: tuple) -> list[str]:
        raise NotImplementedError

    def tail(self) -> list[str]:
        return [DONE]


class ChatStream(_Stream):
    """A streamed ``chat.completion.chunk`` reply.

    The first chunk carries every choice's ``role``; text comes as ``delta.content``, a tool call as
    ``delta.tool_calls`` and its result as this server's ``delta.tool_result``; a choice ends with a
    chunk whose ``finish_reason`` is set, and (if asked for) a last chunk with no choices carries ``usage``.
    """

    object = "chat.completion.chunk"

    def __init__(self, rid: str, created: int, model: str, n: int, include_usage: bool,
                 call_ids: CallIds | None = None):
        super().__init__(rid, created, model, n, include_usage)
        self.call_ids = call_ids or CallIds()

    @staticmethod
    def delta(i: int, d: dict, finish_reason: str | None = None) -> dict:
        return {"index": i, "delta": d, "logprobs": None, "finish_reason": finish_reason}

    def head(self) -> list[str]:
        return [self.chunk([self.delta(i, {"role": "assistant", "content": ""}) for i in range(self.n)])]

    def _event(self, item: tuple) -> list[str]:
        if item[0] == "finish":
            return [self.chunk([self.delta(item[1], {}, item[2])])]
        _, i, kind, value = item
        if kind == "text":
            return [self.chunk([self.delta(i, {"content": value})])]
        if kind == "tool_call":
            call = {"index": self.call_ids.count(i), **tool_call(self.call_ids.new(i), value)}
            return [self.chunk([self.delta(i, {"tool_calls": [call]})])]
        return [self.chunk([self.delta(i, {"tool_result": {"tool_call_id": self.call_ids.last(i), "content": value}})])]

    def _end(self, usage: dict[str, int]) -> list[str]:
        # A chat request is one job: its end is the reply's end, so usage goes out right here.
        super()._end(usage)
        return [self.chunk([], self.usage)] if self.include_usage else []


class CompletionStream(_Stream):
    """A streamed ``text_completion`` reply (choice ``i`` is sample ``i % n`` of prompt ``i // n``).

    With ``echo`` (one text per prompt) a first chunk carries the prompts; a choice ends with an
    empty-text chunk whose ``finish_reason`` is set; ``usage`` (if asked for) comes after all prompts.
    """

    object = "text_completion"

    def __init__(self, rid: str, created: int, model: str, n: int, include_usage: bool,
                 echo: list[str] | None = None):
        super().__init__(rid, created, model, n, include_usage)
        self.echo = echo

    @staticmethod
    def choice(i: int, text: str, finish_reason: str | None = None) -> dict:
        return {"index": i, "text": text, "logprobs": None, "finish_reason": finish_reason}

    def head(self) -> list[str]:
        if not self.echo:
            return []
        return [self.chunk([self.choice(i, self.echo[i // self.n]) for i in range(len(self.echo) * self.n)])]

    def _event(self, item: tuple) -> list[str]:
        if item[0] == "finish":
            return [self.chunk([self.choice(item[1], "", item[2])])]
        return [self.chunk([self.choice(item[1], item[3])])] if item[2] == "text" else []

    def tail(self) -> list[str]:
        return ([self.chunk([], self.usage)] if self.include_usage else []) + [DONE]
