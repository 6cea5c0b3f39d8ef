"""`foundry serve`: the OpenAI-compatible API, driven by the official `openai` client against a real server.

Two small models stand in for a trained chat model:
- ``tool_model``: overfit in a few seconds on one conversation in which the assistant calls
  the calculator, so greedy decoding reproduces a real tool call through the engine;
- ``chatty_model``: random weights whose reply-ending tokens are made (nearly) impossible,
  so every reply runs to ``max_tokens`` — long, predictable streams for the concurrency tests.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch

from helpers import ROOT, one_line_error, overfit_on, run_cli, wait_until

openai = pytest.importorskip("openai")

TOOL_CHAT = [{"role": "user", "content": "What is 37*12?"},
             {"role": "assistant", "content": [{"type": "text", "text": "Let me compute. "},
                                               {"type": "python", "text": "37*12"},
                                               {"type": "python_output", "text": "444"},
                                               {"type": "text", "text": "It is 444."}]}]
QUESTION = TOOL_CHAT[:1]
KEY = "sk-test-key"


# ---------------------------------------------------------------------------- models and servers
def chatty_model(path: Path, *, dim: int = 64, n_layers: int = 2, max_seq_len: int = 512) -> Path:
    """A random byte-level MiniLLM whose replies never end early (they run to max_tokens).

    Feature 0 of every embedding is set to +1 and of the ending tokens to -1. The embedding is
    tied to the output head and feature 0 dominates the normalised residual, so an ending
    token's logit sits far below every other: it is (practically) never sampled.
    """
    from llm_foundry.config import ModelConfig
    from llm_foundry.models import MiniLLM
    from llm_foundry.tokenizers import build_tokenizer
    from llm_foundry.models.model_dir import save_model_dir

    tok = build_tokenizer("byte")
    torch.manual_seed(0)
    model = MiniLLM(ModelConfig(vocab_size=tok.vocab_size, dim=dim, n_layers=n_layers, n_heads=4,
                                max_seq_len=max_seq_len))
    with torch.no_grad():
        emb = model.tok_embeddings.weight
        emb[:, 0] = 1.0
        for name in ("<|assistant_end|>", "<|bos|>", "<|eos|>", "<|user_start|>", "<|python_start|>",
                     "<|output_start|>"):
            emb[tok.token_id(name), 0] = -1.0
    save_model_dir(path, model, tok)
    return path


def tool_model(path: Path, steps: int = 150) -> Path:
    """A tiny MiniLLM overfit on TOOL_CHAT: asked QUESTION, it calls the calculator and answers."""
    from llm_foundry.config import ModelConfig
    from llm_foundry.models import MiniLLM
    from llm_foundry.tokenizers import build_tokenizer
    from llm_foundry.models.model_dir import save_model_dir

    tok = build_tokenizer("byte")
    torch.manual_seed(0)
    model = MiniLLM(ModelConfig(vocab_size=tok.vocab_size, dim=64, n_layers=2, n_heads=4, max_seq_len=128))
    overfit_on(model, tok, TOOL_CHAT, steps)
    save_model_dir(path, model, tok)
    return path


def start_server(model_dir: Path, name: str, **kwargs):
    """A real uvicorn server on 127.0.0.1 (free port) in a background thread."""
    from llm_foundry.inference.engine import Engine
    from llm_foundry.serve import ServerThread, create_app

    engine = Engine.from_pretrained(model_dir, device="cpu", precision="fp32")
    return ServerThread(create_app(engine, name, **kwargs))


@pytest.fixture(scope="module")
def tool_dir(tmp_path_factory) -> Path:
    return tool_model(tmp_path_factory.mktemp("serve") / "tool-model")


@pytest.fixture(scope="module")
def chatty_dir(tmp_path_factory) -> Path:
    # big enough that a 1000-token reply takes a second or two on a CPU
    return chatty_model(tmp_path_factory.mktemp("serve") / "chatty", dim=128, n_layers=4, max_seq_len=1024)


@pytest.fixture(scope="module")
def server(tool_dir):
    """The tool model behind an API key."""
    with start_server(tool_dir, "tool-model", api_key=KEY) as s:
        yield s


@pytest.fixture()
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=300)



def sse_lines(response: httpx.Response) -> list[str]:
    return [line[6:] for line in response.iter_lines() if line.startswith("data: ")]


# ---------------------------------------------------------------------------- the openai client
def test_list_models(client):
    models = client.models.list()
    assert [m.id for m in models.data] == ["tool-model"]
    assert client.models.retrieve("tool-model").owned_by == "llm-foundry"


def test_chat_with_tool_call(client, tool_dir):
    from llm_foundry.data.chat import render_prompt
    from llm_foundry.tokenizers import load_tokenizer

    r = client.chat.completions.create(model="tool-model", messages=QUESTION, temperature=0)
    choice = r.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.message.role == "assistant"
    assert choice.message.content == "Let me compute. It is 444."
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "calculator"
    assert json.loads(call.function.arguments) == {"expression": "37*12"}
    # the result the engine's calculator produced, tied to the call
    assert choice.message.model_extra["tool_results"] == [{"tool_call_id": call.id, "content": "444"}]
    prompt_tokens = len(render_prompt(load_tokenizer(tool_dir), QUESTION))
    assert r.usage.prompt_tokens == prompt_tokens
    assert r.usage.completion_tokens > 20 and r.usage.total_tokens == prompt_tokens + r.usage.completion_tokens


def test_chat_stream_matches_non_stream(client):
    stream = client.chat.completions.create(model="tool-model", messages=QUESTION, temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    text, calls, results, finish, usage, pieces = "", [], [], None, None, 0
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for c in chunk.choices:
            if c.delta.content:
                text += c.delta.content
                pieces += 1
            calls += c.delta.tool_calls or []
            if (c.delta.model_extra or {}).get("tool_result"):
                results.append(c.delta.model_extra["tool_result"])
            finish = c.finish_reason or finish
    assert pieces > 5  # it really streamed, piece by piece
    assert text == "Let me compute. It is 444." and finish == "stop"
    assert json.loads(calls[0].function.arguments) == {"expression": "37*12"} and calls[0].index == 0
    assert results == [{"tool_call_id": calls[0].id, "content": "444"}]
    assert usage.completion_tokens > 20


def test_conversation_round_trip(client):
    """A reply sent back as history (tool_calls and all) is accepted for the next turn."""
    first = client.chat.completions.create(model="tool-model", messages=QUESTION, temperature=0)
    history = [*QUESTION, first.choices[0].message.model_dump(exclude_none=True),
               {"role": "user", "content": "再算一次？"}]
    r = client.chat.completions.create(model="tool-model", messages=history, max_tokens=5)
    assert r.choices[0].finish_reason in ("stop", "length") and r.usage.prompt_tokens > first.usage.prompt_tokens
    # OpenAI-style tool messages are accepted too
    history = [*QUESTION, {"role": "assistant", "content": "", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "calculator", "arguments": '{"expression": "1+1"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "2"}, {"role": "user", "content": "ok"}]
    assert client.chat.completions.create(model="tool-model", messages=history, max_tokens=3).choices


def test_stop_n_and_seed(client):
    r = client.chat.completions.create(model="tool-model", messages=QUESTION, temperature=0, stop=["compute"])
    assert r.choices[0].message.content == "Let me " and r.choices[0].finish_reason == "stop"
    kw = dict(model="tool-model", messages=QUESTION, temperature=1.5, max_tokens=8, n=3, seed=7)
    a, b = client.chat.completions.create(**kw), client.chat.completions.create(**kw)
    assert [c.index for c in a.choices] == [0, 1, 2]
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]
    assert all(c.finish_reason == "length" for c in a.choices) and a.usage.completion_tokens == 24
    finished = {}
    for chunk in client.chat.completions.create(**kw, stream=True):
        for c in chunk.choices:
            finished[c.index] = c.finish_reason or finished.get(c.index)
    assert finished == {0: "length", 1: "length", 2: "length"}


def test_completions(client):
    r = client.completions.create(model="tool-model", prompt="Let me", max_tokens=5, temperature=0)
    assert r.object == "text_completion" and r.choices[0].finish_reason == "length"
    assert r.usage.prompt_tokens == 6 and r.usage.completion_tokens == 5 and 0 < len(r.choices[0].text) <= 5
    chunks = list(client.completions.create(model="tool-model", prompt="Let me", max_tokens=5, temperature=0,
                                            stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == r.choices[0].text
    assert chunks[-1].choices[0].finish_reason == "length"
    # characters that some line readers split on (U+2028, U+0085) never break an event's line
    odd = "a\u2028b\u0085c 你好"
    with httpx.stream("POST", str(client.base_url.join("completions")), headers={"Authorization": f"Bearer {KEY}"},
                      timeout=300, json={"model": "tool-model", "prompt": odd, "echo": True, "stream": True,
                                         "max_tokens": 2}) as r:
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]  # iter_lines splits on U+2028
    assert events[-1] == "[DONE]" and json.loads(events[0])["choices"][0]["text"] == odd
    two = client.completions.create(model="tool-model", prompt=["Let me", "It is"], max_tokens=3, n=2, echo=True)
    assert [c.index for c in two.choices] == [0, 1, 2, 3]
    assert two.choices[0].text.startswith("Let me") and two.choices[3].text.startswith("It is")


# ---------------------------------------------------------------------------- errors
def test_bad_or_missing_key(server):
    bad = openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        bad.models.list()
    assert e.value.status_code == 401 and e.value.body["code"] == "invalid_api_key"
    r = httpx.post(server.url + "/v1/chat/completions", json={"model": "tool-model", "messages": QUESTION}, timeout=300)
    assert r.status_code == 401 and r.json()["error"]["type"] == "invalid_request_error"
    assert httpx.get(server.url + "/health", timeout=300).status_code == 200  # health and the page need no key
    assert httpx.get(server.url + "/", timeout=300).status_code == 200


def test_malformed_requests(client, server):
    auth = {"Authorization": f"Bearer {KEY}"}
    r = httpx.post(server.url + "/v1/chat/completions", content=b'{"model": "tool-model", "messages": [',
                   headers={**auth, "Content-Type": "application/json"}, timeout=300)
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tool-model", messages=[])
    assert e.value.body["param"] == "messages"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tool-model", messages=QUESTION, temperature=5)
    assert e.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError, match="last message must be from the user"):
        client.chat.completions.create(model="tool-model", messages=[*QUESTION, {"role": "assistant", "content": "x"}])
    with pytest.raises(openai.BadRequestError, match="user and assistant turns alternate"):
        client.chat.completions.create(model="tool-model", messages=[*QUESTION, *QUESTION])
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4o", messages=QUESTION)
    assert e.value.status_code == 404 and e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tool-model", messages=[{"role": "user", "content": "x" * 500}])
    assert e.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="tool-model", prompt=[99999])
    r = httpx.get(server.url + "/v1/nothing-here", headers=auth, timeout=300)
    assert r.status_code == 404 and "error" in r.json()


# ---------------------------------------------------------------------------- concurrency
@pytest.mark.slow
def test_overload_queue_disconnect_and_fairness(chatty_dir):
    """One slot and one queue place: the third request is refused; a departed client frees its slot;
    a short request admitted next to a long one finishes first (nobody starves)."""
    with start_server(chatty_dir, "chatty", max_concurrency=1, max_queue=1) as s:
        c = openai.OpenAI(base_url=s.url + "/v1", api_key="none", max_retries=0, timeout=300)
        body = {"model": "chatty", "messages": [{"role": "user", "content": "hi"}], "stream": True, "max_tokens": 1000}
        with httpx.Client(timeout=300) as h:
            with h.stream("POST", s.url + "/v1/chat/completions", json=body) as long:
                lines = long.iter_lines()  # (keep a reference: a discarded iterator closes the response)
                next(lines)  # the long reply is running and holds the only slot
                queued = threading.Thread(target=lambda: c.chat.completions.create(
                    model="chatty", messages=[{"role": "user", "content": "x"}], max_tokens=2))
                queued.start()
                wait_until(lambda: h.get(s.url + "/health").json()["queued"] == 1)
                with pytest.raises(openai.RateLimitError) as e:
                    c.chat.completions.create(model="chatty", messages=[{"role": "user", "content": "y"}])
                assert e.value.status_code == 429 and e.value.body["code"] == "server_overloaded"
                # leaving the `with` closes the connection mid-stream
            queued.join(300)
            assert not queued.is_alive()
            # the slot is freed just after the reply's last byte is sent: wait for it rather than race it
            wait_until(lambda: h.get(s.url + "/health").json()["active"] == 0)
            health = h.get(s.url + "/health").json()
            assert health["active"] == 0 and health["queued"] == 0 and health["cancelled"] == 1
            # a non-streamed request whose client gives up is dropped too
            body = {**body, "stream": False}
            with pytest.raises(httpx.ReadTimeout):
                h.post(s.url + "/v1/chat/completions", json=body, timeout=0.3)
            wait_until(lambda: (lambda x: x["cancelled"] == 2 and x["active"] == 0)(h.get(s.url + "/health").json()))
            health = h.get(s.url + "/health").json()
            assert health["cancelled"] == 2 and health["active"] == 0

        with start_server(chatty_dir, "chatty2", max_concurrency=4) as s2:
            done: dict[str, float] = {}

            def run(name: str, max_tokens: int) -> None:
                c2 = openai.OpenAI(base_url=s2.url + "/v1", api_key="none", max_retries=0, timeout=300)
                r = c2.chat.completions.create(model="chatty2", messages=[{"role": "user", "content": name}],
                                               max_tokens=max_tokens)
                assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == max_tokens
                done[name] = time.monotonic()

            long = threading.Thread(target=run, args=("long", 400))
            long.start()
            # the short request starts only once the long one holds a slot and is decoding
            wait_until(lambda: httpx.get(s2.url + "/health", timeout=300).json()["active"] == 1)
            run("short", 10)
            long.join(300)
            assert done["short"] < done["long"]


def test_one_set_of_sampling_bounds_everywhere(client, tool_dir):
    """The same bad value gives the same error from the server, the Python API and the command line."""
    from llm_foundry import Generator
    from llm_foundry.inference.engine import Engine
    from llm_foundry.utils.errors import FoundryError

    rule = "must be a number from 0 to 2 (0 = greedy) (got 5.0)"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tool-model", messages=QUESTION, temperature=5)
    assert e.value.body["message"] == f"invalid value for 'temperature': temperature {rule}"
    with pytest.raises(openai.BadRequestError, match="top_p must be a number in"):
        client.completions.create(model="tool-model", prompt="x", top_p=0)
    for api in (Generator.from_pretrained(tool_dir, device="cpu"), Engine.from_pretrained(tool_dir, device="cpu")):
        with pytest.raises(FoundryError, match=rf"^temperature {re.escape(rule)}$"):
            list(api.stream("x" if isinstance(api, Generator) else [1, 2], temperature=5.0))
    for command in ("generate", "chat"):
        one_line_error(run_cli(command, tool_dir, "--temperature", "5"), f"error: --temperature {rule}")
    one_line_error(run_cli("chat", tool_dir, "--top-k", "-1"), "--top-k must be an integer >= 0")


# ---------------------------------------------------------------------------- the command line
def _start_cli(model_dir: Path, *args: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "llm_foundry", "serve", str(model_dir), "--port", "0",
                             "--device", "cpu", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=ROOT)
    line = proc.stdout.readline()
    assert "serving" in line, line + proc.stderr.read()
    url = line.split(" on ")[1].split()[0]
    return proc, url


@pytest.mark.slow
def test_cli_serves_and_shuts_down_gracefully(chatty_dir):
    """SIGTERM while a reply streams: the reply still completes, then the server exits 0."""
    proc, url = _start_cli(chatty_dir, "--model-name", "slow")
    try:
        body = {"model": "slow", "messages": [{"role": "user", "content": "hi"}], "stream": True, "max_tokens": 600}
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=300) as r:
            lines = r.iter_lines()
            first = next(lines)
            assert first.startswith("data: ")
            proc.send_signal(signal.SIGTERM)
            rest = [line[6:] for line in lines if line.startswith("data: ")]
        assert rest[-1] == "[DONE]"
        finish = [json.loads(x)["choices"][0]["finish_reason"] for x in rest[:-1] if json.loads(x)["choices"]]
        assert finish[-1] == "length"
        assert proc.wait(30) == 0
        err = proc.stderr.read()
        assert '"POST /v1/chat/completions" 200' in err  # the request log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cli_errors(tmp_path, chatty_dir):
    one_line_error(run_cli("serve", tmp_path / "missing"), "not found")
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        one_line_error(run_cli("serve", chatty_dir, "--port", str(port), "--device", "cpu"), "cannot listen", str(port))
    one_line_error(run_cli("serve", chatty_dir, "--max-concurrency", "0"), "--max-concurrency")
