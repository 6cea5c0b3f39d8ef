"""Request bodies of the OpenAI-compatible API, validated, and OpenAI messages -> chat messages.

Fields a client may send that this server does not act on (``user``, ``logprobs: null``,
``presence_penalty: 0`` ...) are accepted and ignored, as OpenAI-compatible servers do;
a field with a wrong type or range is a 400 naming the field.
"""

from __future__ import annotations

import json
from typing import Any, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from ..config.sampling import check_sampling
from ..utils.errors import FoundryError

# A client asking for many samples at once multiplies the work of one slot; keep it bounded.
MAX_N = 16
# Stop strings are checked after every token, each against the text held back for it: bound both.
MAX_STOP = 4
MAX_STOP_CHARS = 256
# A request's messages and tool calls are converted and rendered before anything is decoded; bound that work.
MAX_MESSAGES = 1024
MAX_TOOL_CALLS = 1024
TOOL_NAME = "calculator"


class ApiError(Exception):
    """An error answered in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers  # extra response headers (a 429's Retry-After)

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class _Sampling(BaseModel):
    """Options both endpoints share."""

    model_config = ConfigDict(extra="allow")

    model: str
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int | None = None  # not in OpenAI's API; vLLM and llama.cpp accept it too
    max_tokens: int | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = Field(1, ge=1, le=MAX_N)
    stream: bool = False
    stream_options: dict[str, Any] | None = None

    @field_validator("temperature", "top_p", "top_k", "max_tokens", "max_completion_tokens", "seed", "n",
                     check_fields=False, mode="before")
    @classmethod
    def _not_bool(cls, v, info: ValidationInfo):
        # pydantic would take a JSON true for 1: a client that sends one made a mistake worth hearing about.
        if isinstance(v, bool):
            raise ValueError(f"{info.field_name} must be a number, not {json.dumps(v)}")
        return v

    @field_validator("temperature", "top_p", "top_k", "max_tokens", "max_completion_tokens", "seed",
                     check_fields=False)
    @classmethod
    def _sampling(cls, v, info: ValidationInfo):
        # The bounds of every entry point, from the one check (config/sampling.py).
        name = "max_new_tokens" if info.field_name.startswith("max_") else info.field_name
        try:
            check_sampling(**{name: v}, names={name: info.field_name})
        except FoundryError as e:
            raise ValueError(str(e)) from None
        return v

    @field_validator("stop")
    @classmethod
    def _stop(cls, v):
        if isinstance(v, str):
            v = [v]
        if v is not None and len(v) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop sequences")
        if v is not None and any(len(s) > MAX_STOP_CHARS for s in v):
            raise ValueError(f"a stop sequence may have at most {MAX_STOP_CHARS} characters")
        return [s for s in v if s] if v else []

    def stop_list(self) -> list[str]:
        return list(self.stop or [])

    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))


class ChatCompletionRequest(_Sampling):
    messages: list[dict[str, Any]] = Field(min_length=1)
    max_completion_tokens: int | None = None  # the newer name of max_tokens

    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_Sampling):
    prompt: Union[str, list[str], list[int], list[list[int]]]
    max_tokens: int | None = 16  # OpenAI's default for /v1/completions
    echo: bool = False

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt(cls, v):
        # One check with one message (pydantic would name a union member per failure), and token ids
        # are integers proper: a JSON true is not token 1.
        def ids(x) -> bool:
            return isinstance(x, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in x)

        if isinstance(v, str) or (isinstance(v, list) and (all(isinstance(p, str) for p in v) or ids(v)
                                                            or all(ids(p) for p in v))):
            return v
        raise ValueError("prompt must be a string, a list of strings, a list of token ids (integers) "
                         "or a list of such lists")

    def token_limit(self) -> int | None:
        return self.max_tokens


def parse_body(raw: bytes, model_cls: type[BaseModel]) -> Any:
    """Decode and validate a JSON body; every problem is a 400 :class:`ApiError`.

    Beyond malformed JSON that covers what the JSON parser accepts but Python cannot use:
    an integer of more than 4,300 digits, nesting deeper than the parser's recursion
    limit, and a lone UTF-16 surrogate (``"\\ud800"``), which no text encoding can hold.
    """
    try:
        data = json.loads(raw)
    except RecursionError:
        raise ApiError(400, "the request body is nested too deeply", code="invalid_json") from None
    except ValueError as e:  # bad JSON, bad UTF-8, or an integer too long to convert
        raise ApiError(400, f"the request body is not valid JSON: {e}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the request body must be a JSON object")
    if (where := _lone_surrogate(data)) is not None:
        raise ApiError(400, f"invalid value for '{where}': a lone UTF-16 surrogate is not text", param=where,
                       code="invalid_value")
    try:
        return model_cls.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        param = ".".join(str(p) for p in err["loc"]) or None
        if err["type"] == "missing":
            msg = f"missing required parameter: '{param}'"
        else:
            # A validator's own message as it is (pydantic would prefix "Value error, ").
            reason = err["ctx"]["error"] if err["type"] == "value_error" else err["msg"]
            msg = f"invalid value for '{param}': {reason}"
        code = "missing_parameter" if err["type"] == "missing" else "invalid_value"
        raise ApiError(400, msg, param=param, code=code) from None


def _lone_surrogate(data: Any) -> str | None:
    """The dotted path of the first string (value or key) in ``data`` with a lone surrogate, else None.

    One pass over the parsed body, with its own stack: a JSON body can nest as deep as the parser allows.
    """
    stack: list[tuple[Any, str]] = [(data, "")]
    while stack:
        value, path = stack.pop()
        if isinstance(value, str):
            if not _encodable(value):
                return path
        elif isinstance(value, dict):
            for k, v in value.items():
                if not _encodable(k):  # (named by its parent: the path itself must stay encodable)
                    return path or "body"
                where = f"{path}.{k}" if path else k
                stack.append((v, where))
        elif isinstance(value, list):
            stack.extend((v, f"{path}.{i}") for i, v in enumerate(value))
    return None


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _text(content: Any, where: str) -> str:
    """The text of an OpenAI message content: a string or a list of text parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        out = []
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                out.append(part["text"])
            else:
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise ApiError(400, f"{where}: only text content parts are supported, got {kind!r}", param=where)
        return "".join(out)
    raise ApiError(400, f"{where}: content must be a string or a list of text parts", param=where)


def tool_expression(call: Any, where: str) -> str:
    """The calculator expression of an OpenAI ``tool_calls`` entry sent back by a client."""
    fn = call.get("function") if isinstance(call, dict) else None
    if not isinstance(fn, dict) or fn.get("name") != TOOL_NAME:
        raise ApiError(400, f"{where}: the only tool is a function named '{TOOL_NAME}'", param=where)
    args = fn.get("arguments", "{}")
    try:
        args = json.loads(args) if isinstance(args, str) else args
    except (ValueError, RecursionError):  # as for the body: bad JSON, a 5,000-digit integer, nesting too deep
        raise ApiError(400, f"{where}: function.arguments is not JSON", param=where) from None
    if not isinstance(args, dict) or not isinstance(args.get("expression"), str):
        raise ApiError(400, f"{where}: arguments must be {{\"expression\": \"...\"}}", param=where)
    if not _encodable(args["expression"]):  # "\\ud800" inside the arguments string: the body's check cannot see it
        raise ApiError(400, f"{where}: the expression holds a lone UTF-16 surrogate, which is not text", param=where)
    return args["expression"]


def to_chat_messages(messages: list[dict[str, Any]]) -> list[dict]:
    """OpenAI chat messages -> the chat format of :mod:`llm_foundry.data.chat`, in one linear pass.

    ``developer`` counts as ``system``. An assistant message's ``tool_calls`` become
    python parts, and ``tool`` messages that follow become python_output parts of that
    assistant turn, so a client can send a conversation back exactly as it received it.

    Raises:
        ApiError: 400 for a malformed message, more than :data:`MAX_MESSAGES` messages or
            more than :data:`MAX_TOOL_CALLS` tool calls in all.
    """
    if len(messages) > MAX_MESSAGES:
        raise ApiError(400, f"at most {MAX_MESSAGES} messages per request (got {len(messages)})", param="messages",
                       code="too_many_messages")
    out: list[dict] = []
    n_calls = 0
    for i, m in enumerate(messages):
        where = f"messages.{i}"
        if not isinstance(m, dict):
            raise ApiError(400, f"{where} must be an object", param=where)
        role = m.get("role")
        if role in ("system", "developer"):
            out.append({"role": "system", "content": _text(m.get("content"), where)})
        elif role == "user":
            out.append({"role": "user", "content": _text(m.get("content"), where)})
        elif role == "assistant":
            calls = m.get("tool_calls") or []
            if not isinstance(calls, list):
                raise ApiError(400, f"{where}.tool_calls must be a list", param=f"{where}.tool_calls")
            n_calls += len(calls)
            if n_calls > MAX_TOOL_CALLS:
                raise ApiError(400, f"at most {MAX_TOOL_CALLS} tool calls per request", param=f"{where}.tool_calls",
                               code="too_many_tool_calls")
            text = _text(m.get("content"), where)
            if not calls:
                out.append({"role": "assistant", "content": text})
                continue
            # This server's replies carry each call's result in `tool_results`; use them when sent back.
            sent = m.get("tool_results") if isinstance(m.get("tool_results"), list) else []
            results = [r["content"] if isinstance(r, dict) and isinstance(r.get("content"), str) else None
                       for r in sent[:len(calls)]]
            turn = _ToolTurn([tool_expression(c, f"{where}.tool_calls.{j}") for j, c in enumerate(calls)],
                             results + [None] * (len(calls) - len(results)), text)
            out.append({"role": "assistant", "content": turn})
        elif role == "tool":
            prev = out[-1] if out else None
            if not prev or not isinstance(prev["content"], _ToolTurn):
                raise ApiError(400, f"{where}: a tool message must follow an assistant message with tool_calls",
                               param=where)
            prev["content"].add_result(_text(m.get("content"), where))
        else:
            raise ApiError(400, f"{where}.role must be system, user, assistant or tool (got {role!r})",
                           param=f"{where}.role")
    for msg in out:
        if isinstance(msg["content"], _ToolTurn):
            msg["content"] = msg["content"].parts()
    if out[-1]["role"] != "user":
        raise ApiError(400, "the last message must be from the user", param="messages")
    from ..data.chat import validate_messages

    try:
        validate_messages(out)
    except FoundryError as e:
        raise ApiError(400, f"messages: {e}", param="messages") from None
    return out


class _ToolTurn:
    """An assistant turn with tool calls while its ``tool`` messages are still coming.

    A result belongs to the first call that has none yet (extra results are dropped). ``next``
    only moves forward, so filling every result costs one pass, not a scan per tool message.
    """

    def __init__(self, calls: list[str], results: list[str | None], text: str):
        self.calls, self.results, self.text, self.next = calls, results, text, 0

    def add_result(self, text: str) -> None:
        while self.next < len(self.results) and self.results[self.next] is not None:
            self.next += 1
        if self.next < len(self.results):
            self.results[self.next] = text

    def parts(self) -> list[dict]:
        """The turn as chat parts: each call, its result if any, then the text."""
        parts: list[dict] = []
        for call, result in zip(self.calls, self.results):
            parts.append({"type": "python", "text": call})
            if result is not None:
                parts.append({"type": "python_output", "text": result})
        if self.text:
            parts.append({"type": "text", "text": self.text})
        return parts
