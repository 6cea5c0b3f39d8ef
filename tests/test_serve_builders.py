"""The server's pure builders: OpenAI request -> prompt and job, scheduler items -> reply, chunks and errors.

No server, no event loop, no model: a byte tokenizer and the scheduler's item tuples are all they need.
(tests/test_serve.py drives the same wire format through a real server and the `openai` client.)
"""

from __future__ import annotations

import contextlib
import itertools
import json

import pytest

from llm_foundry.serve import builders
from llm_foundry.serve.schemas import ApiError, ChatCompletionRequest, CompletionRequest, parse_body
from llm_foundry.tokenizers import build_tokenizer

QUESTION = [{"role": "user", "content": "What is 37*12?"}]
# What the scheduler puts on a request's queue for one reply that calls the calculator.
TOOL_ITEMS = [("event", 0, "text", "Let me compute. "), ("event", 0, "tool_call", "37*12"),
              ("event", 0, "tool_result", "444"), ("event", 0, "text", "It is "), ("event", 0, "text", "444."),
              ("finish", 0, "stop"), ("end", {"prompt_tokens": 20, "completion_tokens": 30, "total_tokens": 50})]


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer("byte")


def chat_request(**fields) -> ChatCompletionRequest:
    return parse_body(json.dumps({"model": "m", "messages": QUESTION, **fields}).encode(), ChatCompletionRequest)


def completion_request(**fields) -> CompletionRequest:
    return parse_body(json.dumps({"model": "m", "prompt": "hi", **fields}).encode(), CompletionRequest)


def numbered_ids():
    counter = itertools.count()
    return builders.CallIds(lambda: f"call_{next(counter)}")


def events(chunks: list[str]) -> list:
    """The JSON objects of server-sent events (``[DONE]`` as the string)."""
    out = []
    for c in chunks:
        assert c.startswith("data: ") and c.endswith("\n\n") and "\n" not in c[:-2]  # one event, one line
        out.append(c[6:-2] if c == builders.DONE else json.loads(c[6:-2]))
    return out


@contextlib.contextmanager
def raises_api_error(status: int, **fields):
    """The block raises an ApiError with this status and these body fields (param, code, ...)."""
    with pytest.raises(ApiError) as e:
        yield
    assert e.value.status == status
    for k, v in fields.items():
        assert e.value.body()["error"][k] == v


# ---------------------------------------------------------------------------- requests -> prompts and jobs
def test_chat_prompt_renders_openai_messages(tok):
    from llm_foundry.data.chat import render_prompt

    assert builders.chat_prompt(tok, QUESTION) == render_prompt(tok, QUESTION)
    # a conversation sent back with this server's tool_calls becomes python/output blocks of that turn
    history = [*QUESTION, {"role": "assistant", "content": "It is 444.",
                           "tool_calls": [builders.tool_call("c1", "37*12")],
                           "tool_results": [{"tool_call_id": "c1", "content": "444"}]},
               {"role": "user", "content": "ok"}]
    rendered = tok.decode(builders.chat_prompt(tok, history))
    assert "37*12" in rendered and "444" in rendered
    with raises_api_error(400, param="messages"):
        builders.chat_prompt(tok, [*QUESTION, *QUESTION])  # turns must alternate
    with raises_api_error(400, param="messages"):
        builders.chat_prompt(tok, [*QUESTION, {"role": "assistant", "content": "x"}])


def test_completion_prompts(tok):
    assert builders.completion_prompts(tok, "ab") == [tok.encode("ab")]
    assert builders.completion_prompts(tok, ["a", "b"]) == [tok.encode("a"), tok.encode("b")]
    assert builders.completion_prompts(tok, [5, 6]) == [[5, 6]]  # token ids: one prompt
    assert builders.completion_prompts(tok, [[5], [6, 7]]) == [[5], [6, 7]]
    assert builders.completion_prompts(tok, "") == [[tok.token_id("<|bos|>")]]  # an empty prompt starts a document
    with raises_api_error(400, param="prompt"):
        builders.completion_prompts(tok, [])
    with raises_api_error(400, param="prompt"):
        builders.completion_prompts(tok, ["x"] * (builders.MAX_PROMPTS + 1))
    with raises_api_error(400, param="prompt"):
        builders.completion_prompts(tok, [tok.vocab_size])


def test_job_options_clip_to_the_context():
    req = chat_request(max_tokens=100, temperature=0.5, top_p=1, stop="END", seed=3, n=2)
    opts = builders.job_options(req, list(range(30)), [1, 2], context=64)
    assert opts["max_tokens"] == 34  # what the context still holds, not the 100 asked for
    assert opts["top_p"] is None and opts["stop"] == ["END"] and opts["seed"] == 3 and opts["n"] == 2
    assert opts["stop_ids"] == [1, 2] and opts["temperature"] == 0.5
    assert builders.job_options(chat_request(), [0] * 10, [], context=64)["max_tokens"] == 54  # no limit: the room
    assert builders.job_options(completion_request(), [0] * 10, [], context=64)["max_tokens"] == 16  # OpenAI's default
    with raises_api_error(400, code="context_length_exceeded", param="messages"):
        builders.job_options(req, [0] * 64, [], context=64)
    with raises_api_error(400, code="context_length_exceeded", param="prompt"):
        builders.job_options(completion_request(), [0] * 64, [], context=64)


# ---------------------------------------------------------------------------- small bodies and errors
def test_model_check_card_and_health():
    builders.check_model("m", "m")
    with raises_api_error(404, code="model_not_found", param="model"):
        builders.check_model("gpt-4o", "m")
    assert builders.model_card("m", 7, 128) == {"id": "m", "object": "model", "created": 7, "owned_by": "llm-foundry",
                                                "context_length": 128, "chat": True}
    assert builders.model_card("m", 7, 128, chat=False)["chat"] is False  # a base model: completions only
    assert builders.health("m", None) == ({"status": "ok", "model": "m", "chat": True}, 200)
    assert builders.health("m", {"active": 1, "queued": 0})[0]["active"] == 1
    # a dead worker: not ok, and a status a supervisor acts on
    body, status = builders.health("m", {"active": 0, "error": "the worker died"})
    assert status == 503 and body["status"] == "error" and body["error"] == "the worker died"


def test_api_key_check():
    key = "sk-secret"
    assert builders.api_key_error("GET", "/v1/models", "", None) is None  # no key set: open
    assert builders.api_key_error("GET", "/v1/models", "Bearer sk-secret", key) is None
    assert builders.api_key_error("GET", "/v1/models", "bearer  sk-secret ", key) is None
    assert builders.api_key_error("GET", "/health", "", key) is None  # health and the page stay open
    assert builders.api_key_error("GET", "/", "", key) is None
    assert builders.api_key_error("OPTIONS", "/v1/chat/completions", "", key) is None  # CORS preflight
    for auth in ("", "Bearer wrong", "sk-secret", "Basic sk-secret"):
        err = builders.api_key_error("POST", "/v1/chat/completions", auth, key)
        assert err.status == 401 and err.body()["error"]["code"] == "invalid_api_key"


def test_error_bodies():
    body = builders.http_error_body("GET", "/v1/nothing", 404, "Not Found")
    assert body == {"error": {"message": "GET /v1/nothing: Not Found", "type": "invalid_request_error",
                              "param": None, "code": "not_found"}}
    assert builders.http_error_body("GET", "/v1/models", 405, "x")["error"]["code"] == "method_not_allowed"
    assert builders.http_error_body("GET", "/nothing", 404, "Not Found") == {"detail": "Not Found"}
    err = builders.internal_error("req-1")  # the exception itself goes to the log only
    assert err.status == 500 and err.body()["error"] == {
        "message": "internal server error (request req-1; the server log has the details)",
        "type": "server_error", "param": None, "code": None}


# ---------------------------------------------------------------------------- non-streamed replies
def collected(items) -> builders.Collected:
    got = builders.Collected()
    for item in items:
        got.add(item)
    return got


def test_chat_completion_with_a_tool_call():
    reply = builders.chat_completion("chatcmpl-1", 7, "m", 1, collected(TOOL_ITEMS), numbered_ids())
    assert reply == {
        "id": "chatcmpl-1", "object": "chat.completion", "created": 7, "model": "m", "system_fingerprint": None,
        "choices": [{"index": 0, "logprobs": None, "finish_reason": "stop", "message": {
            "role": "assistant", "content": "Let me compute. It is 444.",
            "tool_calls": [{"id": "call_0", "type": "function",
                            "function": {"name": "calculator", "arguments": '{"expression": "37*12"}'}}],
            "tool_results": [{"tool_call_id": "call_0", "content": "444"}]}}],
        "usage": {"prompt_tokens": 20, "completion_tokens": 30, "total_tokens": 50}}


def test_chat_completion_of_several_samples():
    items = [("event", 1, "text", "b"), ("event", 0, "text", "a"), ("finish", 1, "length"), ("finish", 0, "stop"),
             ("end", {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7})]
    choices = builders.chat_completion("r", 0, "m", 2, collected(items))["choices"]
    assert [(c["index"], c["message"], c["finish_reason"]) for c in choices] == [
        (0, {"role": "assistant", "content": "a"}, "stop"), (1, {"role": "assistant", "content": "b"}, "length")]


def test_a_failed_generation_is_a_500():
    got = builders.Collected()
    got.add(("event", 0, "text", "a"))
    with raises_api_error(500, type="server_error"):
        got.add(("error", "generation failed (request r)"))
    with raises_api_error(503, type="server_error", code="worker_failed"):  # the worker died while it waited
        builders.Collected().add(("error", "the server cannot generate", 503))


def test_text_completion_with_prompts_samples_and_echo():
    items = [("event", k, "text", f"<{k}>") for k in range(4)] + [("finish", k, "length") for k in range(4)]
    items += [("end", {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4})] * 2  # usage of both prompts
    reply = builders.text_completion("cmpl-1", 7, "m", 2, 2, collected(items), echo=["P", "Q"])
    assert reply["object"] == "text_completion"
    assert [(c["index"], c["text"], c["finish_reason"]) for c in reply["choices"]] == [
        (0, "P<0>", "length"), (1, "P<1>", "length"), (2, "Q<2>", "length"), (3, "Q<3>", "length")]
    assert reply["usage"] == {"prompt_tokens": 4, "completion_tokens": 4, "total_tokens": 8}
    plain = builders.text_completion("cmpl-1", 7, "m", 1, 1, collected([("event", 0, "tool_call", "1+1"),
                                                                        ("event", 0, "text", "x")]))
    assert plain["choices"] == [{"index": 0, "text": "x", "logprobs": None, "finish_reason": "stop"}]


# ---------------------------------------------------------------------------- streams
def run_stream(stream, items) -> list:
    return events(stream.head() + [c for item in items for c in stream.feed(item)] + stream.tail())


def test_chat_stream_chunks():
    out = run_stream(builders.ChatStream("r", 7, "m", 1, include_usage=True, call_ids=numbered_ids()), TOOL_ITEMS)
    assert out[-1] == "[DONE]"
    assert all(c["id"] == "r" and c["object"] == "chat.completion.chunk" and c["model"] == "m" for c in out[:-1])
    deltas = [c["choices"][0]["delta"] for c in out[:-2]]
    assert deltas[0] == {"role": "assistant", "content": ""}
    assert deltas[2] == {"tool_calls": [{"index": 0, "id": "call_0", "type": "function",
                                         "function": {"name": "calculator", "arguments": '{"expression": "37*12"}'}}]}
    assert deltas[3] == {"tool_result": {"tool_call_id": "call_0", "content": "444"}}
    assert "".join(d.get("content", "") for d in deltas) == "Let me compute. It is 444."
    assert out[-3]["choices"][0]["finish_reason"] == "stop" and out[-3]["choices"][0]["delta"] == {}
    assert out[-2]["choices"] == [] and out[-2]["usage"]["completion_tokens"] == 30  # usage last, as asked
    assert all(c["usage"] is None for c in out[:-2])


def test_chat_stream_matches_the_non_streamed_reply():
    """The same items give the same text, calls, results and finish reasons either way."""
    items = [("event", 0, "text", "x"), ("event", 1, "tool_call", "2+2"), ("event", 1, "tool_result", "4"),
             ("event", 1, "tool_call", "3*3"), ("event", 1, "tool_result", "9"), ("event", 0, "text", "y"),
             ("finish", 0, "length"), ("event", 1, "text", "done"), ("finish", 1, "stop"),
             ("end", {"prompt_tokens": 3, "completion_tokens": 9, "total_tokens": 12})]
    reply = builders.chat_completion("r", 0, "m", 2, collected(items), numbered_ids())
    out = run_stream(builders.ChatStream("r", 0, "m", 2, include_usage=False, call_ids=numbered_ids()), items)
    assert out[0]["choices"] == [{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                  "finish_reason": None} for i in range(2)]
    assert "usage" not in out[1]  # not asked for: no usage field at all
    for choice in reply["choices"]:
        i, msg = choice["index"], choice["message"]
        mine = [c["choices"][0] for c in out[1:-1] if c["choices"][0]["index"] == i]
        assert "".join(c["delta"].get("content", "") for c in mine) == msg["content"]
        calls = [call for c in mine for call in c["delta"].get("tool_calls", [])]
        assert [{k: v for k, v in call.items() if k != "index"} for call in calls] == msg.get("tool_calls", [])
        assert [call["index"] for call in calls] == list(range(len(calls)))
        results = [c["delta"]["tool_result"] for c in mine if "tool_result" in c["delta"]]
        assert results == msg.get("tool_results", [])
        assert [c["finish_reason"] for c in mine if c["finish_reason"]] == [choice["finish_reason"]]


def test_completion_stream_with_echo_usage_and_an_error():
    items = [("event", 0, "text", "a"), ("event", 1, "text", "b"), ("finish", 0, "length"),
             ("end", {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3}), ("error", "boom")]
    out = run_stream(builders.CompletionStream("c", 7, "m", 1, include_usage=True, echo=["P", "Q"]), items)
    assert [(x["index"], x["text"]) for x in out[0]["choices"]] == [(0, "P"), (1, "Q")]
    assert [x["choices"][0]["text"] for x in out[1:3]] == ["a", "b"]
    assert out[3]["choices"][0]["finish_reason"] == "length"
    assert out[4] == {"error": {"message": "boom", "type": "server_error", "param": None, "code": None}}
    assert out[5]["choices"] == [] and out[5]["usage"]["completion_tokens"] == 1
    assert out[6] == "[DONE]"
    no_echo = run_stream(builders.CompletionStream("c", 7, "m", 1, include_usage=False), items[:3])
    assert no_echo[0]["choices"][0]["text"] == "a" and "usage" not in no_echo[0] and no_echo[-1] == "[DONE]"


def test_sse_keeps_an_event_on_one_line():
    odd = "a\u2028b\u0085c\u2029 你好"
    (chunk,) = events([builders.sse({"text": odd})])
    assert chunk == {"text": odd}
    assert "你好" in builders.sse(odd)  # UTF-8 stays readable, not \\u-escaped
    assert not any(ch in builders.sse(odd) for ch in "\u2028\u0085\u2029")


def test_merge_text_joins_waiting_text_of_one_choice():
    items = [("event", 0, "text", "a"), ("event", 0, "text", "b"), ("event", 1, "text", "c"),
             ("event", 1, "tool_call", "1+1"), ("event", 1, "text", "d"), ("event", 1, "text", "e"),
             ("finish", 1, "stop"), ("end", {})]
    assert builders.merge_text(items) == [
        ("event", 0, "text", "ab"), ("event", 1, "text", "c"), ("event", 1, "tool_call", "1+1"),
        ("event", 1, "text", "de"), ("finish", 1, "stop"), ("end", {})]
