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
MAX_STOP = 4
TOOL_NAME = "calculator"


class ApiError(Exception):
    """An error answered in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

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

    def token_limit(self) -> int | None:
        return self.max_tokens


def parse_body(raw: bytes, model_cls: type[BaseModel]) -> Any:
    """Decode and validate a JSON body; every problem is a 400 :class:`ApiError`."""
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApiError(400, f"the request body is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the request body must be a JSON object")
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
    except json.JSONDecodeError:
        raise ApiError(400, f"{where}: function.arguments is not JSON", param=where) from None
    if not isinstance(args, dict) or not isinstance(args.get("expression"), str):
        raise ApiError(400, f"{where}: arguments must be {{\"expression\": \"...\"}}", param=where)
    return args["expression"]


def to_chat_messages(messages: list[dict[str, Any]]) -> list[dict]:
    """OpenAI chat messages -> the chat format of :mod:`llm_foundry.data.chat`.

    ``developer`` counts as ``system``. An assistant message's ``tool_calls`` become
    python parts, and ``tool`` messages that follow become python_output parts of that
    assistant turn, so a client can send a conversation back exactly as it received it.
    """
    out: list[dict] = []
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
            parts: list[dict] = []
            text = _text(m.get("content"), where)
            calls = m.get("tool_calls") or []
            if not isinstance(calls, list):
                raise ApiError(400, f"{where}.tool_calls must be a list", param=f"{where}.tool_calls")
            # This server's replies carry each call's result in `tool_results`; use them when sent back.
            results = m.get("tool_results") if isinstance(m.get("tool_results"), list) else []
            for j, call in enumerate(calls):
                parts.append({"type": "python", "text": tool_expression(call, f"{where}.tool_calls.{j}")})
                result = results[j] if j < len(results) else None
                if isinstance(result, dict) and isinstance(result.get("content"), str):
                    parts.append({"type": "python_output", "text": result["content"]})
            if text:
                parts.append({"type": "text", "text": text})
            out.append({"role": "assistant", "content": parts if calls else text})
        elif role == "tool":
            prev = out[-1] if out else None
            if not prev or prev["role"] != "assistant" or not isinstance(prev["content"], list):
                raise ApiError(400, f"{where}: a tool message must follow an assistant message with tool_calls",
                               param=where)
            parts = prev["content"]
            # The result belongs right after the first call that has none yet; extra results are dropped.
            for k, p in enumerate(parts):
                if p["type"] == "python" and (k + 1 == len(parts) or parts[k + 1]["type"] != "python_output"):
                    parts.insert(k + 1, {"type": "python_output", "text": _text(m.get("content"), where)})
                    break
        else:
            raise ApiError(400, f"{where}.role must be system, user, assistant or tool (got {role!r})",
                           param=f"{where}.role")
    if out[-1]["role"] != "user":
        raise ApiError(400, "the last message must be from the user", param="messages")
    from ..data.chat import validate_messages

    try:
        validate_messages(out)
    except FoundryError as e:
        raise ApiError(400, f"messages: {e}", param="messages") from None
    return out
