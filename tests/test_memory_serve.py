"""`foundry serve MODEL --memory MEM`: a real server on 127.0.0.1, driven by the official `openai` client.

On the tiny setup of test_memory_pipeline.py (a few steps per stage): these check that a
request is answered as `foundry memory ask` / `foundry chat --memory` answer it, that edits made
by another process reach the next request, and the refusals; not the quality figures.

The store holds ``k + 1`` entries (k = 2 in the tiny preset), so after one delete every live entry
is retrieved: which ids a request read then follows from the store alone, not from how well the
tiny gate ranks.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from helpers import ROOT, one_line_error, run_cli, run_main, wait_until
from test_memory_pipeline import build_tiny

openai = pytest.importorskip("openai")

FACTS = ["Velmora Quist was born in Oslo.", "Tarsk Works makes kites.", "Ana Brell lives in Lima."]
Q = "Where was Velmora Quist born?"
SHOW = {"memory": {"show_retrieval": True}}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """A tiny backbone and a trained memory folder for it holding FACTS (ids 1, 2, 3)."""
    from llm_foundry.memory.pipeline import train_memory

    setup = build_tiny(tmp_path_factory.mktemp("memserve"))
    mem = setup["root"] / "trained"
    shutil.copytree(setup["fresh"], mem)
    train_memory(mem, ["router", "fusion", "joint", "memory"], quiet=True)
    from llm_foundry.memory.store import MemoryStore

    with MemoryStore.open(mem) as store:
        store.add(FACTS)
    return {**setup, "trained": mem}


def copy(tiny, name: str) -> Path:
    dst = tiny["root"] / name
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(tiny["trained"], dst)
    return dst


def start(tiny, mem: Path, **kwargs):
    """A real uvicorn server on 127.0.0.1 (free port, background thread) answering from ``mem``."""
    from llm_foundry.memory.pipeline import open_memory
    from llm_foundry.serve import ServerThread, create_app
    from llm_foundry.serve.memory import MemoryService

    service = MemoryService(open_memory(mem, device="cpu", backbone=tiny["backbone"]), kwargs.pop("max_queue", 64))
    return ServerThread(create_app(None, "backbone", memory=service, **kwargs)), service


def client_of(server) -> "openai.OpenAI":
    return openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=120)


def ask(client, question: str = Q, **body):
    r = client.chat.completions.create(model="backbone", messages=[{"role": "user", "content": question}],
                                       extra_body=body or None)
    return r.choices[0].message.content, (r.model_extra or {}).get("retrieved")



# ---------------------------------------------------------------- answers
def test_answers_as_ask_and_chat_do(tiny, capsys):
    mem = copy(tiny, "same")
    asked = json.loads(run_main(capsys, "memory", "ask", mem, "--question", Q, "--json").stdout)
    off = json.loads(run_main(capsys, "memory", "ask", mem, "--question", Q, "--no-memory", "--json").stdout)
    chat = run_cli("chat", tiny["backbone"], "--memory", mem, "--prompt", Q, "--device", "cpu")
    assert chat.returncode == 0, chat.stderr
    server, _ = start(tiny, mem)
    with server:
        client = client_of(server)
        text, found = ask(client, **SHOW)
        assert text == asked["answer"] == chat.stdout.rstrip("\n")
        assert [r["id"] for r in found] == asked["retrieved"]
        assert all(set(r) == {"id", "text", "score"} and r["text"] == FACTS[r["id"] - 1] for r in found)
        assert ask(client) == (asked["answer"], None)  # retrieval shown only when asked for
        # The memory switched off: the backbone alone, as `ask --no-memory` answers.
        assert ask(client, memory={"enabled": False, "show_retrieval": True}) == (off["answer"], [])
        # /v1/completions and a stream give the same answer; the stream's own chunk carries what was read.
        done = client.completions.create(model="backbone", prompt=Q, extra_body=SHOW)
        assert done.choices[0].text == asked["answer"] and done.model_extra["retrieved"] == found
        chunks = list(client.chat.completions.create(model="backbone", stream=True, extra_body=SHOW,
                                                     messages=[{"role": "user", "content": Q}]))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == asked["answer"]
        assert [c.model_extra["retrieved"] for c in chunks if not c.choices] == [found]
        # Earlier turns are not read: the last user message is the question.
        history = [{"role": "user", "content": "Who makes kites?"}, {"role": "assistant", "content": "x"},
                   {"role": "user", "content": Q}]
        r = client.chat.completions.create(model="backbone", messages=history)
        assert r.choices[0].message.content == asked["answer"]


def test_edits_by_another_process_reach_the_next_request(tiny):
    mem = copy(tiny, "edits")
    server, _ = start(tiny, mem)
    with server:
        client = client_of(server)

        def health() -> dict:
            return httpx.get(server.url + "/health", timeout=30).json()["memory"]

        assert {"entries": 3, "version": 3}.items() <= health().items()
        _, found = ask(client, **SHOW)
        assert len(found) == 2
        assert run_cli("memory", "delete", mem, "1").returncode == 0
        assert health()["entries"] == 2 and health()["version"] == 4  # /health reads the store as it is now
        _, found = ask(client, **SHOW)
        assert sorted(r["id"] for r in found) == [2, 3]  # the deleted entry is never read again
        assert run_cli("memory", "update", mem, "2", "--text", "Tarsk Works makes sails.").returncode == 0
        _, found = ask(client, **SHOW)
        assert {r["id"]: r["text"] for r in found}[2] == "Tarsk Works makes sails."
        added = run_cli("memory", "add", mem, "--text", "Orrin Vale plays the harp.")
        assert added.stdout.split() == ["4"]
        assert run_cli("memory", "delete", mem, "3").returncode == 0
        _, found = ask(client, **SHOW)
        assert sorted(r["id"] for r in found) == [2, 4]
        assert health() == {"entries": 2, "version": 7, "read_version": 7, "k": 2}
        assert run_cli("memory", "rollback", mem, "3").returncode == 0  # the three facts as they were
        _, found = ask(client, **SHOW)
        assert {r["id"] for r in found} <= {1, 2, 3} and all(r["text"] == FACTS[r["id"] - 1] for r in found)


def test_a_busy_memory_never_blocks_the_event_loop(tiny):
    """While the memory thread is held (an answer in progress), /health and /v1/models still answer, and a
    request beyond the queue gets 429; released, the waiting request is answered."""
    server, service = start(tiny, copy(tiny, "busy"), max_queue=0)
    with server:
        client = client_of(server)
        got: list = []
        service.live.lock.acquire()  # the memory thread now waits, as behind a long answer
        try:
            waiting = threading.Thread(target=lambda: got.append(ask(client)))
            waiting.start()
            wait_until(lambda: httpx.get(server.url + "/health", timeout=30).json()["active"] == 1)
            assert httpx.get(server.url + "/v1/models", timeout=30).status_code == 200
            with pytest.raises(openai.RateLimitError):
                ask(client)
        finally:
            service.live.lock.release()
        waiting.join(60)
        assert len(got) == 1 and isinstance(got[0][0], str)
        assert httpx.get(server.url + "/health", timeout=30).json()["completed"] == 1


def test_bad_requests_are_4xx(tiny):
    server, _ = start(tiny, copy(tiny, "bad"))
    with server:
        client = client_of(server)
        for body, fragment in (({"memory": {"enabled": "yes"}}, "memory.enabled"),
                               ({"memory": {"shw_retrieval": True}}, "memory.shw_retrieval"),
                               ({"memory": [True]}, "'memory'"),
                               ({"n": 2}, "n must be 1")):
            with pytest.raises(openai.BadRequestError, match=fragment):
                ask(client, **body)
        with pytest.raises(openai.BadRequestError, match="empty"):
            ask(client, question="   ")
        with pytest.raises(openai.BadRequestError, match="one question"):
            client.completions.create(model="backbone", prompt=[Q, Q])
        with pytest.raises(openai.BadRequestError, match="context"):
            ask(client, question="why " * 200)
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="other", messages=[{"role": "user", "content": Q}])
        assert ask(client)[0] is not None  # and it still answers


def test_a_server_without_memory_refuses_the_memory_field(tiny):
    from llm_foundry.inference.engine import Engine
    from llm_foundry.serve import ServerThread, create_app

    engine = Engine.from_pretrained(tiny["backbone"], device="cpu", precision="fp32")
    with ServerThread(create_app(engine, "backbone")) as server:
        with pytest.raises(openai.BadRequestError, match="no memory attached"):
            client_of(server).completions.create(model="backbone", prompt=Q, max_tokens=2, extra_body=SHOW)
        assert "memory" not in httpx.get(server.url + "/health", timeout=30).json()


# ---------------------------------------------------------------- the command line
def test_cli_serves_the_memory_and_stops_on_sigterm(tiny):
    mem = copy(tiny, "cli")
    proc = subprocess.Popen([sys.executable, "-m", "llm_foundry", "serve", str(tiny["backbone"]), "--memory", str(mem),
                             "--port", "0", "--device", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT)
    try:
        line = proc.stdout.readline()
        assert f"with memory {mem} (3 entries)" in line, line + proc.stderr.read()
        url = line.split(" on ")[1].split()[0]
        assert httpx.get(url + "/health", timeout=30).json()["memory"]["entries"] == 3
        r = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=120).chat.completions.create(
            model="backbone", messages=[{"role": "user", "content": Q}], extra_body=SHOW)
        assert len(r.model_extra["retrieved"]) == 2
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cli_refuses_in_one_line(tiny, tmp_path):
    from safetensors.torch import load_file, save_file

    other = tmp_path / "other"
    shutil.copytree(tiny["backbone"], other)
    weights = {k: v + 0.01 for k, v in load_file(other / "model.safetensors").items()}
    save_file(weights, other / "model.safetensors", metadata={"format": "pt"})
    mem = tiny["trained"]
    one_line_error(run_cli("serve", other, "--memory", mem, "--port", "0"), "another backbone")
    one_line_error(run_cli("serve", tiny["backbone"], "--memory", tmp_path / "none", "--port", "0"), "not found")
    one_line_error(run_cli("serve", tiny["backbone"], "--memory", mem, "--compile", "--port", "0"), "--compile")
