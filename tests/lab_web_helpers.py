"""Starting a real `foundry lab web` in a subprocess, on a free loopback port, with its own homes."""

from __future__ import annotations

import contextlib
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import httpx

from helpers import ROOT


def lab_env(tmp: Path, modules: Path | None = None) -> dict[str, str]:
    """An environment whose lab home, home folder (default workspaces) and modules are under ``tmp``."""
    env = {**os.environ, "HOME": str(tmp / "home"), "FOUNDRY_LAB_HOME": str(tmp / "lab"),
           "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    if modules is not None:
        env["FOUNDRY_LAB_MODULES"] = str(modules)
    (tmp / "home").mkdir(parents=True, exist_ok=True)
    return env


def foundry(env: dict[str, str], *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llm_foundry", *args], env=env, input=stdin, text=True,
                          capture_output=True, timeout=120)


def add_user(env: dict[str, str], name: str, role: str = "learner", password: str = "correct horse") -> None:
    done = foundry(env, "lab", "web", "--add-user", name, "--role", role, stdin=password + "\n")
    assert done.returncode == 0, done.stderr


@contextlib.contextmanager
def lab_server(env: dict[str, str], *args: str, timeout: float = 120.0) -> Iterator[str]:
    """`foundry lab web --port 0 ARGS`; yields its URL once it answers."""
    proc = subprocess.Popen([sys.executable, "-m", "llm_foundry", "lab", "web", "--port", "0", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(l) for l in proc.stdout], daemon=True).start()
    try:
        deadline = time.monotonic() + timeout
        url = None
        while url is None:
            assert proc.poll() is None, "the server exited: " + "".join(list(lines.queue))
            try:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError("the server printed no address") from None
            if "http://" in line:
                url = line.split("http://", 1)[1].split("/", 1)[0]
        url = f"http://{url}"
        while True:  # listening is printed before uvicorn serves: poll until it answers
            try:
                httpx.get(url + "/api/me", timeout=5)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the server never answered"
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def client(url: str, name: str | None = None, password: str = "correct horse") -> tuple[httpx.Client, dict]:
    """An HTTP client (logged in as ``name`` in classroom mode) and its CSRF header."""
    c = httpx.Client(base_url=url, timeout=120)
    if name is not None:
        r = c.post("/api/login", json={"name": name, "password": password})
        assert r.status_code == 200, r.text
    me = c.get("/api/me").json()
    return c, {"X-CSRF-Token": me.get("csrf", "")}


def run_and_wait(c: httpx.Client, headers: dict, number: int) -> tuple[dict, list[str]]:
    """Start a test run of module ``number`` and read its event stream to the end: (results, event names)."""
    r = c.post(f"/api/modules/{number}/runs", headers=headers)
    assert r.status_code == 200, r.text
    job = r.json()
    names, result, event = [], None, None
    with c.stream("GET", f"/api/runs/{job['id']}/events") as s:
        for line in s.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
                names.append(event)
            elif line.startswith("data: ") and event in ("result", "failed"):
                import json
                result = json.loads(line[6:])
    assert result is not None, names
    return result, names
