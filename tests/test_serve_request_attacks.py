"""`foundry serve` under hostile or unlucky requests: each case against a real server on 127.0.0.1.

Every case asserts the exact status and OpenAI's error shape ``{"error": {message, type, param, code}}``.
The model is a small real one (test_serve's ``chatty_model``: replies run to ``max_tokens``). Where a
case needs the worker busy or broken, the model's ``forward`` is held at a gate or made to raise:
a fault injected into the real engine, so nothing is timed and nothing sleeps.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from test_serve import _start_cli, chatty_model, wait_until

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
HI = [{"role": "user", "content": "hi"}]


# ---------------------------------------------------------------------------- models, servers, faults
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return chatty_model(tmp_path_factory.mktemp("attacks") / "chatty")


@pytest.fixture(scope="module")
def char_dir(tmp_path_factory) -> Path:
    """A base model as `foundry train --text` makes one: a char tokenizer, so no chat tokens."""
    import torch

    from llm_foundry.config import ModelConfig
    from llm_foundry.models import MiniLLM
    from llm_foundry.models.model_dir import save_model_dir
    from llm_foundry.tokenizers import build_tokenizer

    tok = build_tokenizer("char", ["hello world, a plain text without chat turns.\n"])
    torch.manual_seed(0)
    model = MiniLLM(ModelConfig(vocab_size=tok.vocab_size, dim=32, n_layers=1, n_heads=2, max_seq_len=64))
    path = tmp_path_factory.mktemp("attacks") / "char-base"
    save_model_dir(path, model, tok)
    return path


class WorkerKilled(BaseException):
    """What no per-request handler catches: it takes the decode thread down."""


class Gate:
    """Fault injection on a model's forward: hold it closed (a prefill as long as the test wants), or raise."""

    def __init__(self):
        self.open = threading.Event()
        self.open.set()
        self.entered = threading.Event()
        self.fault: BaseException | None = None

    def install(self, model) -> None:
        real = model.forward

        def forward(*args, **kwargs):
            self.entered.set()
            self.open.wait(120)
            if self.fault is not None:
                raise self.fault
            return real(*args, **kwargs)

        model.forward = forward

    def close(self) -> None:
        self.entered.clear()
        self.open.clear()


@contextlib.contextmanager
def serve(model_dir: Path, gate: Gate | None = None, **kwargs):
    """A real server on 127.0.0.1 around an engine that decodes with the model itself (so a gate sees it)."""
    from llm_foundry.inference.engine import Engine
    from llm_foundry.models.model_dir import load_model_dir
    from llm_foundry.serve import ServerThread, create_app

    bundle = load_model_dir(model_dir)
    engine = Engine(bundle.model, bundle.tokenizer, precision="fp32")
    if gate is not None:
        gate.install(bundle.model)
    with ServerThread(create_app(engine, "m", **kwargs)) as s:
        s.engine = engine
        try:
            yield s
        finally:
            if gate is not None:
                gate.open.set()  # never leave the worker held: the server stops after its replies


@pytest.fixture(scope="module")
def server(model_dir):
    with serve(model_dir) as s:
        yield s


@pytest.fixture()
def http():
    with httpx.Client(timeout=60) as h:
        yield h


def api_error(r: httpx.Response, status: int, **fields) -> dict:
    """``r`` is ``status`` with exactly OpenAI's error shape, and these fields; returns the error."""
    assert r.status_code == status, r.text
    body = r.json()
    assert list(body) == ["error"] and sorted(body["error"]) == ["code", "message", "param", "type"], body
    for k, v in fields.items():
        assert body["error"][k] == v, body
    return body["error"]


def post_raw(http: httpx.Client, s, path: str, raw: bytes) -> httpx.Response:
    return http.post(s.url + path, content=raw, headers={"Content-Type": "application/json"})


def health(s) -> httpx.Response:
    return httpx.get(s.url + "/health", timeout=30)


# ---------------------------------------------------------------------------- client mistakes are 400s
def test_lone_surrogate_in_chat_content(server, http):
    raw = b'{"model": "m", "messages": [{"role": "user", "content": "a\\ud800b"}]}'
    api_error(post_raw(http, server, CHAT, raw), 400, param="messages.0.content", code="invalid_value",
              type="invalid_request_error")
    # a surrogate pair is one real character, not an attack
    pair = b'{"model": "m", "max_tokens": 2, "messages": [{"role": "user", "content": "\\ud83d\\ude00"}]}'
    assert post_raw(http, server, CHAT, pair).status_code == 200


def test_lone_surrogate_in_prompt(server, http):
    raw = b'{"model": "m", "prompt": "x\\udfff", "max_tokens": 2}'
    api_error(post_raw(http, server, COMPLETIONS, raw), 400, param="prompt", code="invalid_value")
    raw = b'{"model": "m", "prompt": ["ok", "\\ud800"], "max_tokens": 2}'
    api_error(post_raw(http, server, COMPLETIONS, raw), 400, param="prompt.1", code="invalid_value")


def test_integer_over_4300_digits(server, http):
    raw = b'{"model": "m", "prompt": "x", "max_tokens": ' + b"9" * 5000 + b"}"
    err = api_error(post_raw(http, server, COMPLETIONS, raw), 400, code="invalid_json", type="invalid_request_error")
    assert err["message"].startswith("the request body is not valid JSON")


def test_deeply_nested_json(server, http):
    raw = b'{"model": "m", "prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    err = api_error(post_raw(http, server, COMPLETIONS, raw), 400, code="invalid_json")
    assert err["message"] == "the request body is nested too deeply"


def test_tiny_temperature_is_greedy(server, http):
    body = {"model": "m", "prompt": "Once", "max_tokens": 8, "n": 2}
    greedy = http.post(server.url + COMPLETIONS, json={**body, "temperature": 0})
    tiny = http.post(server.url + COMPLETIONS, json={**body, "temperature": 1e-300})
    assert greedy.status_code == tiny.status_code == 200, tiny.text
    texts = [c["text"] for c in tiny.json()["choices"]]
    assert texts == [c["text"] for c in greedy.json()["choices"]] and texts[0] == texts[1]


def test_seed_beyond_63_bits(server, http):
    r = http.post(server.url + CHAT, json={"model": "m", "messages": HI, "seed": 2**70})
    err = api_error(r, 400, param="seed", code="invalid_value")
    assert "2**63 - 1" in err["message"]


def test_booleans_are_not_numbers(server, http):
    r = http.post(server.url + COMPLETIONS, json={"model": "m", "prompt": [True], "max_tokens": 2})
    api_error(r, 400, param="prompt", code="invalid_value")
    r = http.post(server.url + COMPLETIONS, json={"model": "m", "prompt": [[5, False]], "max_tokens": 2})
    api_error(r, 400, param="prompt", code="invalid_value")
    r = http.post(server.url + CHAT, json={"model": "m", "messages": HI, "n": True})
    api_error(r, 400, param="n", code="invalid_value")
    for field in ("temperature", "max_tokens", "seed"):
        r = http.post(server.url + CHAT, json={"model": "m", "messages": HI, field: True})
        api_error(r, 400, param=field, code="invalid_value")


def test_too_many_messages(server, http):
    turns = [{"role": "user" if i % 2 == 0 else "assistant", "content": "x"} for i in range(1025)]
    err = api_error(http.post(server.url + CHAT, json={"model": "m", "messages": turns}), 400,
                    param="messages", code="too_many_messages")
    assert err["message"] == "at most 1024 messages per request (got 1025)"


def test_too_many_tool_calls(server, http):
    call = {"id": "c", "type": "function", "function": {"name": "calculator", "arguments": '{"expression": "1"}'}}
    messages = [*HI, {"role": "assistant", "content": "", "tool_calls": [call] * 1025}, *HI]
    err = api_error(http.post(server.url + CHAT, json={"model": "m", "messages": messages}), 400,
                    param="messages.1.tool_calls", code="too_many_tool_calls")
    assert err["message"] == "at most 1024 tool calls per request"


def test_stop_strings_are_capped(server, http):
    r = http.post(server.url + CHAT, json={"model": "m", "messages": HI, "stop": "x" * 257})
    err = api_error(r, 400, param="stop", code="invalid_value")
    assert "at most 256 characters" in err["message"]
    r = http.post(server.url + CHAT, json={"model": "m", "messages": HI, "stop": ["a", "b", "c", "d", "e"]})
    api_error(r, 400, param="stop", code="invalid_value")
    ok = http.post(server.url + CHAT, json={"model": "m", "messages": HI, "stop": "y" * 256, "max_tokens": 3})
    assert ok.status_code == 200


def test_impossible_length_is_refused_before_tokenizing(server, http, monkeypatch):
    """A prompt with more characters than the context could hold in any tokens is a 400 without encoding it."""
    tok = server.engine.tokenizer
    calls = []
    real = tok.encode
    monkeypatch.setattr(tok, "encode", lambda text, **kw: calls.append(len(text)) or real(text, **kw))
    huge = "x" * 200_000
    err = api_error(http.post(server.url + CHAT, json={"model": "m", "messages": [{"role": "user", "content": huge}]}),
                    400, param="messages", code="context_length_exceeded")
    assert "200000 characters" in err["message"]
    err = api_error(http.post(server.url + COMPLETIONS, json={"model": "m", "prompt": ["ok", huge]}), 400,
                    param="prompt", code="context_length_exceeded")
    assert calls == []  # nothing was tokenized


# ---------------------------------------------------------------------------- CPU work stays off the event loop
def test_tool_messages_convert_in_linear_time(monkeypatch):
    """2,000 and 8,000 tool calls sent back with their tool messages: 4x the input, about 4x the work."""
    from llm_foundry.serve import schemas

    monkeypatch.setattr(schemas, "MAX_TOOL_CALLS", 10**6, raising=False)
    monkeypatch.setattr(schemas, "MAX_MESSAGES", 10**6, raising=False)
    call = {"id": "c", "type": "function", "function": {"name": "calculator", "arguments": '{"expression": "1+1"}'}}

    def cost(n: int) -> float:
        messages = [*HI, {"role": "assistant", "content": "", "tool_calls": [call] * n},
                    *[{"role": "tool", "tool_call_id": "c", "content": "2"}] * n, *HI]
        best = float("inf")
        for _ in range(5):  # CPU time, the best of five: other jobs on the machine only ever add to it
            start = time.process_time()
            out = schemas.to_chat_messages(messages)
            best = min(best, time.process_time() - start)
        assert len(out[1]["content"]) == 2 * n  # every call with its result
        return best

    small, big = cost(2000), cost(8000)
    assert big / small < 6, f"4x the tool calls took {big / small:.1f}x as long (quadratic: ~16x)"


def test_health_answers_while_a_request_is_prepared(server, http, monkeypatch):
    """Tokenizing runs in a worker thread: while it is held, the event loop still answers /health."""
    tok = server.engine.tokenizer
    entered, release = threading.Event(), threading.Event()
    real = tok.encode

    def held_encode(text, **kw):
        if text == "HOLD":
            entered.set()
            release.wait(60)
        return real(text, **kw)

    monkeypatch.setattr(tok, "encode", held_encode)
    result = {}
    t = threading.Thread(target=lambda: result.update(r=http.post(server.url + COMPLETIONS, json={
        "model": "m", "prompt": "HOLD", "max_tokens": 2})))
    t.start()
    try:
        assert entered.wait(30)
        assert httpx.get(server.url + "/health", timeout=10).status_code == 200
    finally:
        release.set()
        t.join(60)
    assert result["r"].status_code == 200


# ---------------------------------------------------------------------------- admission: rows, queue, departures
def stream_chat(stack: contextlib.ExitStack, s, **body) -> httpx.Response:
    """Open a streamed chat request and return once its status arrives (the stream stays open in ``stack``)."""
    h = stack.enter_context(httpx.Client(timeout=60))
    return stack.enter_context(h.stream("POST", s.url + CHAT, json={"model": "m", "messages": HI, "stream": True,
                                                                      "max_tokens": 4, **body}))


def test_429_with_retry_after_when_active_and_queued_are_full(model_dir):
    """--max-concurrency 4 --max-queue 2, one job stuck in a long prefill: 5 more wait, the 7th is refused."""
    gate = Gate()
    with serve(model_dir, gate, max_concurrency=4, max_queue=2) as s, contextlib.ExitStack() as stack:
        gate.close()
        assert stream_chat(stack, s).status_code == 200
        assert gate.entered.wait(30)  # the worker is inside the first request's prefill
        for _ in range(5):
            assert stream_chat(stack, s).status_code == 200
        wait_until(lambda: health(s).json()["queued"] == 5)
        r = stream_chat(stack, s)
        r.read()
        err = api_error(r, 429, type="rate_limit_error", code="server_overloaded")
        assert int(r.headers["Retry-After"]) >= 1 and "busy" in err["message"]
        assert health(s).json()["active"] + health(s).json()["queued"] == 6
        gate.open.set()


def test_rows_are_counted_not_requests(model_dir, http):
    """A request weighs prompts x n: it cannot take every place at once, nor more than the server holds."""
    gate = Gate()
    with serve(model_dir, gate, max_concurrency=4, max_queue=2) as s, contextlib.ExitStack() as stack:
        big = {"model": "m", "prompt": ["a", "b"], "n": 4, "max_tokens": 2}  # 8 rows, the server holds 6
        err = api_error(http.post(s.url + COMPLETIONS, json=big), 400, code="request_too_large")
        assert "8 sequences" in err["message"] and "at most 6" in err["message"]
        gate.close()
        assert stream_chat(stack, s).status_code == 200  # 1 row, stuck in its prefill
        assert gate.entered.wait(30)
        r = stream_chat(stack, s, n=6)  # 1 + 6 > 6
        r.read()
        api_error(r, 429, code="server_overloaded")
        assert stream_chat(stack, s, n=5).status_code == 200  # 1 + 5 = 6: fits
        r = stream_chat(stack, s)
        r.read()
        api_error(r, 429, code="server_overloaded")
        gate.open.set()


def test_departed_queued_client_frees_its_place_at_once(model_dir):
    """A waiting request whose client leaves is out of the queue while the running one is still held."""
    gate = Gate()
    with serve(model_dir, gate, max_concurrency=1, max_queue=1) as s, contextlib.ExitStack() as stack:
        gate.close()
        assert stream_chat(stack, s).status_code == 200
        assert gate.entered.wait(30)
        with contextlib.ExitStack() as waiting:
            assert stream_chat(waiting, s).status_code == 200
            wait_until(lambda: health(s).json()["queued"] == 1)
            r = stream_chat(stack, s)
            r.read()
            api_error(r, 429, code="server_overloaded")
        # the waiting client hung up; the first request is still inside its prefill
        wait_until(lambda: health(s).json()["queued"] == 0, timeout=30)
        assert health(s).json()["cancelled"] == 1 and not gate.open.is_set()
        assert stream_chat(stack, s).status_code == 200  # its place is free again
        gate.open.set()


# ---------------------------------------------------------------------------- faults: a dead worker, an engine error
def test_dead_worker_gives_503_to_health_waiting_and_new_requests(model_dir):
    gate = Gate()
    with serve(model_dir, gate, max_concurrency=1, max_queue=1) as s:
        replies: dict[str, httpx.Response] = {}

        def ask(name: str) -> None:
            replies[name] = httpx.post(s.url + CHAT, json={"model": "m", "messages": HI, "max_tokens": 4}, timeout=60)

        gate.close()
        running = threading.Thread(target=ask, args=("running",), daemon=True)
        running.start()
        assert gate.entered.wait(30)
        waiting = threading.Thread(target=ask, args=("waiting",), daemon=True)
        waiting.start()
        wait_until(lambda: health(s).json()["queued"] == 1)
        gate.fault = WorkerKilled("the decode thread dies")
        gate.open.set()
        wait_until(lambda: health(s).status_code == 503, timeout=30)
        body = health(s).json()
        assert body["status"] == "error" and "restart the server" in body["error"]
        running.join(30)
        waiting.join(30)
        for name in ("running", "waiting"):  # nobody waits forever
            api_error(replies[name], 503, type="server_error", code="worker_failed")
        r = httpx.post(s.url + CHAT, json={"model": "m", "messages": HI}, timeout=30)
        err = api_error(r, 503, type="server_error", code="worker_failed")
        assert err["message"].startswith("the server cannot generate")


def test_500_body_has_no_exception_text(model_dir, caplog):
    """An engine error is logged with the request's id; the client gets the id, not the text or a path."""
    gate = Gate()
    gate.fault = RuntimeError("cannot read /secret/models/weights.safetensors")
    with serve(model_dir, gate) as s:
        with caplog.at_level("ERROR", logger="llm_foundry.serve"):
            r = httpx.post(s.url + CHAT, json={"model": "m", "messages": HI, "max_tokens": 4}, timeout=60)
        err = api_error(r, 500, type="server_error", param=None, code=None)
        assert "/secret" not in err["message"] and "RuntimeError" not in err["message"]
        rid = re.search(r"request (chatcmpl-[0-9a-f]+)", err["message"]).group(1)
        logged = [rec for rec in caplog.records if rid in rec.getMessage()]
        assert logged and "/secret/models" in str(logged[0].exc_info[1])
        assert health(s).status_code == 200  # one failed request does not take the server down


# ---------------------------------------------------------------------------- a base model (no chat template)
def test_base_model_serves_completions_and_refuses_chat(char_dir, http):
    with serve(char_dir) as s:
        r = http.post(s.url + COMPLETIONS, json={"model": "m", "prompt": "hello", "max_tokens": 5, "temperature": 0})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 5
        err = api_error(http.post(s.url + CHAT, json={"model": "m", "messages": HI}), 400, param="messages",
                        code="chat_not_supported")
        assert err["message"] == "this model has no chat template; use /v1/completions"
        assert http.get(s.url + "/v1/models").json()["data"][0]["chat"] is False
        assert http.get(s.url + "/health").json()["chat"] is False


def test_cli_serves_a_char_tokenizer_model(char_dir):
    proc, url = _start_cli(char_dir, "--model-name", "base")
    try:
        r = httpx.post(url + COMPLETIONS, json={"model": "base", "prompt": "he", "max_tokens": 3}, timeout=60)
        assert r.status_code == 200 and json.loads(r.text)["object"] == "text_completion"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
