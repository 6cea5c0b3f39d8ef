"""Module 14 — the chat server (visible tests). Run them with `foundry lab test 14`.

Your app runs in a real uvicorn server, on a Unix domain socket (the sandbox allows no network
sockets; a socket file works the same for HTTP), and the REAL `openai` Python client talks to it —
the one your users' tools use. The chat function is an echo, so the replies are known in advance.
"""

import contextlib
import json
import os
import shutil
import tempfile
import threading
import time

import httpx
import openai
import pytest
import uvicorn

from llm_foundry.lab.testing import check_equal, learner_line

from server import ApiError, chunk, completion, create_app, parse_request, sse, stream_events

WAIT_S = 20.0  # generous: the server starts in well under a second on an idle machine


def echo(messages, max_tokens, temperature):
    """A stand-in model: repeats the last message, one word per piece, at most max_tokens pieces."""
    words = ["you", " said:"] + [" " + w for w in messages[-1]["content"].split()]
    yield from words[:max_tokens]


@contextlib.contextmanager
def serving(app):
    """Run ``app`` in uvicorn on a Unix socket in a thread; yield the socket's path once it answers.

    The socket lives in a short folder of its own: a socket's path may not exceed about 100 bytes,
    and pytest's ``tmp_path`` can be longer than that.
    """
    folder = tempfile.mkdtemp(prefix="lab-")
    path = os.path.join(folder, "s.sock")
    server = uvicorn.Server(uvicorn.Config(app, uds=path, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + WAIT_S
        while not server.started:
            assert thread.is_alive(), "the server stopped while starting (its error is printed above)"
            assert time.monotonic() < deadline, f"the server did not start within {WAIT_S:.0f} s"
            time.sleep(0.01)
        yield path
    finally:
        server.should_exit = True
        thread.join(WAIT_S)
        shutil.rmtree(folder, ignore_errors=True)


def client(path):
    """The real OpenAI client, talking HTTP over the Unix socket ``path``."""
    http = httpx.Client(transport=httpx.HTTPTransport(uds=path), timeout=WAIT_S)
    return openai.OpenAI(base_url="http://lab/v1", api_key="x", http_client=http, max_retries=0)


def raw_post(path, body, **kw):
    with httpx.Client(transport=httpx.HTTPTransport(uds=path), timeout=WAIT_S) as http:
        return http.post("http://lab/v1/chat/completions", content=body if isinstance(body, bytes) else
                         json.dumps(body), headers={"Content-Type": "application/json"}, **kw)


def echo_app():
    """Your app around the echo (inside each test, so that a stub's "not written yet" is a failure)."""
    app = create_app(echo)
    assert app is not None and callable(app), f"create_app(chat){learner_line(create_app)} returned {app!r}, not an app"
    return app


HELLO = [{"role": "user", "content": "hello there"}]


# ---------------------------------------------------------------- the pieces, without a server
def test_error_body_is_openais_shape():
    err = ApiError(400, "temperature must be a number in [0, 2]", param="temperature")
    check_equal("ApiError(400, 'temperature must ...', param='temperature').body()", err.body(),
                {"error": {"message": "temperature must be a number in [0, 2]", "type": "invalid_request_error",
                           "param": "temperature", "code": None}},
                where=ApiError.body, hint="OpenAI's error shape nests the four fields under one key, \"error\"")


def test_parse_request_fills_defaults():
    got = parse_request({"model": "m", "messages": HELLO})
    check_equal("parse_request({'model': 'm', 'messages': [a user message]})", got,
                {"model": "m", "messages": HELLO, "max_tokens": 256, "temperature": 1.0, "stream": False},
                where=parse_request)


BAD = [  # (body, the field a 400 must name)
    ([1, 2], None),
    ({"messages": HELLO}, "model"),
    ({"model": "m"}, "messages"),
    ({"model": "m", "messages": []}, "messages"),
    ({"model": "m", "messages": [{"role": "robot", "content": "hi"}]}, "messages"),
    ({"model": "m", "messages": [{"role": "user", "content": ["hi"]}]}, "messages"),
    ({"model": "m", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}, "messages"),
    ({"model": "m", "messages": HELLO, "temperature": 3}, "temperature"),
    ({"model": "m", "messages": HELLO, "temperature": "hot"}, "temperature"),
    ({"model": "m", "messages": HELLO, "max_tokens": 0}, "max_tokens"),
    ({"model": "m", "messages": HELLO, "max_tokens": 2.5}, "max_tokens"),
    ({"model": "m", "messages": HELLO, "max_tokens": True}, "max_tokens"),
    ({"model": "m", "messages": HELLO, "stream": "yes"}, "stream"),
]


def test_parse_request_refuses_bad_bodies():
    for body, param in BAD:
        call = f"parse_request({json.dumps(body)}){learner_line(parse_request)}"
        try:
            got = parse_request(body)
        except ApiError as e:
            assert e.status == 400, f"{call}: status {e.status}, expected 400 (the client sent a bad request)"
            assert e.param == param, (f"{call}: the error names param={e.param!r}, expected {param!r} — the field "
                                      "the client must fix")
            continue
        raise AssertionError(f"{call}: accepted (returned {got!r}); expected an ApiError(400, ..., param={param!r})"
                             + (": JSON's true is not the number 1" if body.get("max_tokens") is True else ""))


def test_sse_frames_one_event():
    got = sse({"a": "x\ny"})
    hint = ""
    if isinstance(got, str) and got.startswith("data: ") and not got.endswith("\n\n"):
        hint = "a blank line ends each event: the reader waits for it before it parses the data"
    check_equal("sse({'a': 'x\\ny'})", got, 'data: {"a": "x\\ny"}\n\n', where=sse, hint=hint)


def test_chunk_and_completion_bodies():
    check_equal("chunk('id1', 7, 'm', {'content': 'hi'})", chunk("id1", 7, "m", {"content": "hi"}),
                {"id": "id1", "object": "chat.completion.chunk", "created": 7, "model": "m",
                 "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": None}]}, where=chunk,
                hint="a streamed piece is an object \"chat.completion.chunk\" with a delta, not a message")
    check_equal("completion('id1', 7, 'm', 'hello', 'stop')", completion("id1", 7, "m", "hello", "stop"),
                {"id": "id1", "object": "chat.completion", "created": 7, "model": "m",
                 "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"},
                              "finish_reason": "stop"}]}, where=completion)


def test_stream_events_order():
    events = list(stream_events("id1", 7, "m", iter(["a", "", "b"]), max_tokens=10))
    want = [sse(chunk("id1", 7, "m", {"role": "assistant", "content": ""})), sse(chunk("id1", 7, "m", {"content": "a"})),
            sse(chunk("id1", 7, "m", {"content": "b"})), sse(chunk("id1", 7, "m", {}, "stop")), "data: [DONE]\n\n"]
    hint = ""
    if events and events[-1] != "data: [DONE]\n\n":
        hint = "the stream ends with the event data: [DONE] — how a client knows the reply is complete"
    elif events and "role" not in events[0]:
        hint = "the first chunk carries the role, {'role': 'assistant', 'content': ''}"
    call = "list(stream_events('id1', 7, 'm', pieces 'a', '', 'b', max_tokens=10))"
    check_equal(f"the number of events of {call}", len(events), len(want), where=stream_events, hint=hint)
    for i, (got, expected) in enumerate(zip(events, want)):
        check_equal(f"event {i} of {call}", got, expected, where=stream_events)


# ---------------------------------------------------------------- through HTTP, with the openai client
def test_openai_client_gets_a_reply():
    with serving(echo_app()) as path:
        reply = client(path).chat.completions.create(model="lab-model", messages=HELLO)
        check_equal("client.chat.completions.create(model='lab-model', messages=[hello there]).choices[0].message.content",
                    reply.choices[0].message.content, "you said: hello there")
        check_equal("... .choices[0].finish_reason", reply.choices[0].finish_reason, "stop")
        check_equal("... .model (the name the client asked for)", reply.model, "lab-model")
        short = client(path).chat.completions.create(model="m", messages=HELLO, max_tokens=2)
        check_equal("create(..., max_tokens=2): content, finish_reason",
                    (short.choices[0].message.content, short.choices[0].finish_reason), ("you said:", "length"))


def test_openai_client_streams_a_reply():
    with serving(echo_app()) as path:
        deltas, finish, roles = [], [], []
        for c in client(path).chat.completions.create(model="m", messages=HELLO, stream=True):
            assert c.object == "chat.completion.chunk", f"a streamed event has object {c.object!r}"
            d = c.choices[0].delta
            roles += [d.role] if d.role else []
            deltas += [d.content] if d.content else []
            finish += [c.choices[0].finish_reason] if c.choices[0].finish_reason else []
        check_equal("the streamed pieces (stream=True)", deltas, ["you", " said:", " hello", " there"])
        check_equal("the roles announced", roles, ["assistant"])
        check_equal("the finish reasons sent", finish, ["stop"])


def test_stream_on_the_wire():
    with serving(echo_app()) as path:
        with httpx.Client(transport=httpx.HTTPTransport(uds=path), timeout=WAIT_S) as http:
            r = http.post("http://lab/v1/chat/completions", json={"model": "m", "messages": HELLO, "stream": True})
            check_equal("the streamed response's status", r.status_code, 200)
            check_equal("its Content-Type", r.headers.get("content-type", "").split(";")[0], "text/event-stream",
                        hint="server-sent events are served as text/event-stream")
            events = r.text.split("\n\n")
            check_equal("what follows the last event (the body ends with a blank line)", events[-1], "")
            check_equal("the last event", events[-2], "data: [DONE]")
            assert all(e.startswith("data: {") for e in events[:-2]), f"every other event is data: <json>: {events}"


def test_bad_request_is_a_400_in_openais_shape():
    with serving(echo_app()) as path:
        with pytest.raises(openai.BadRequestError) as info:
            client(path).chat.completions.create(model="m", messages=HELLO, temperature=5)
        body = info.value.response.json()
        assert isinstance(body.get("error"), dict) and body["error"].get("param") == "temperature", (
            f"temperature=5 answered {info.value.response.status_code} with {body}: expected a 400 whose body is "
            "{'error': {'message': ..., 'type': ..., 'param': 'temperature', 'code': ...}}")
        r = raw_post(path, b"{not json")
        check_equal("POST of a body that is not JSON: status", r.status_code, 400)
        assert "error" in r.json(), f"its body should be OpenAI's error shape, got {r.text}"


def test_the_page():
    with serving(echo_app()) as path:
        with httpx.Client(transport=httpx.HTTPTransport(uds=path), timeout=WAIT_S) as http:
            r = http.get("http://lab/")
        check_equal("GET / status", r.status_code, 200)
        check_equal("GET / Content-Type", r.headers.get("content-type", "").split(";")[0], "text/html")
        for needed in ("/v1/chat/completions", "stream: true", "[DONE]", "textContent"):
            assert needed in r.text, f"the page at / does not contain {needed!r}: serve PAGE"
