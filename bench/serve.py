"""Load test of `foundry serve`: many concurrent streaming chat clients, loopback only.

A random model of a preset (speed does not depend on training) with a byte tokenizer is
saved as a model folder and served by a real `foundry serve` process on 127.0.0.1 (a
free port). ``--clients`` asyncio clients (httpx) each send streaming
``/v1/chat/completions`` requests back to back for ``--duration`` seconds; requests
started before the deadline run to the end. Bounded in count and time: one request per
client in flight, each with ``--max-tokens`` and a timeout.

Tool blocks are made (practically) impossible in the random model so every reply is
visible text from its first token (see ``make_model``). A stream counts as complete
when it ends with ``data: [DONE]`` after a chunk with a ``finish_reason``; anything else
(HTTP error, error chunk, cut stream, timeout) is an error. Time to first token (TTFT)
is from sending the request to the first chunk that carries reply content. Prints one
JSON object.

``--clients 1,8,64`` runs one phase per count against the same server, one after another.
``--hostile`` adds, during every phase, a stream of malformed and oversized requests (bad
JSON, lone surrogates, deep nesting, huge integers, a 64 MB Content-Length, an over-long
chunked body, a wrong Content-Type, a foreign Host, ...): each must come back as a 4xx in
OpenAI's error shape. A poller reads ``/health`` every 100 ms throughout. The verdict
(``"pass"``) needs: no 5xx anywhere, no hung request (one that hits ``--request-timeout``),
every hostile request a 4xx in OpenAI shape, and ``/health`` p99 under 250 ms.

    python bench/serve.py [--clients 32] [--duration 30] [--max-tokens 64] [--preset tiny]
    python bench/serve.py --clients 1,8,64 --duration 60 --hostile
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def make_model(path: Path, preset: str) -> dict:
    import torch

    from llm_foundry.config import load_config
    from llm_foundry.models import MiniLLM
    from llm_foundry.tokenizers import build_tokenizer
    from llm_foundry.models.model_dir import save_model_dir

    tok = build_tokenizer("byte")
    model_cfg, _ = load_config(preset, [f"model.vocab_size={tok.vocab_size}"])
    torch.manual_seed(0)
    model = MiniLLM(model_cfg)
    # Random weights would now and then open a python block and write no visible text until
    # it closes, which would be measured as a late "first token". Make tool blocks (practically)
    # impossible: feature 0 is +1 in every input embedding, so it dominates the normalised
    # residual; the head's feature 0 is +1 for every token but -1 for the block openers.
    with torch.no_grad():
        model.tok_embeddings.weight[:, 0] = 1.0
        model.output.weight[:, 0] = 1.0
        for name in ("<|python_start|>", "<|output_start|>"):
            model.output.weight[tok.token_id(name), 0] = -1.0
    save_model_dir(path, model, tok)
    return {"preset": preset, "parameters": model.num_parameters(), "dim": model_cfg.dim,
            "n_layers": model_cfg.n_layers, "max_seq_len": model_cfg.max_seq_len}


def start_server(model_dir: Path, args, log_path: Path) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "llm_foundry", "serve", str(model_dir), "--host", "127.0.0.1", "--port", "0",
           "--device", args.device, "--model-name", "bench", "--max-concurrency", str(args.max_concurrency),
           "--max-queue", str(max(64, args.clients))]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=open(log_path, "w"), text=True)
    line = proc.stdout.readline()
    if "serving" not in line:
        proc.kill()
        raise SystemExit(f"the server did not start: {line}{log_path.read_text()}")
    return proc, line.split(" on ")[1].split()[0]


async def one_request(client, url: str, body: dict, timeout: float) -> dict:
    """Send one streaming request; returns {"ok", "ttft", "seconds", "tokens", "finish"} or
    {"ok": False, "error", "status", "hung"} (status 0: no HTTP answer; hung: hit the timeout)."""
    t0 = time.perf_counter()
    seen = {"ttft": None, "finish": None, "done": False, "tokens": 0, "status": 0}

    async def run() -> str | None:
        async with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
            seen["status"] = r.status_code
            if r.status_code != 200:
                return f"HTTP {r.status_code}: {(await r.aread())[:200]!r}"
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                if line[6:] == "[DONE]":
                    seen["done"] = True
                    return None
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    return chunk["error"]["message"]
                if chunk.get("usage"):
                    seen["tokens"] = chunk["usage"]["completion_tokens"]
                for c in chunk["choices"]:
                    d = c.get("delta", {})
                    if seen["ttft"] is None and (d.get("content") or d.get("tool_calls")):
                        seen["ttft"] = time.perf_counter() - t0
                    seen["finish"] = c.get("finish_reason") or seen["finish"]
        return None

    hung = False
    try:
        error = await asyncio.wait_for(run(), timeout)
    except asyncio.TimeoutError:
        error, hung = f"no end after {timeout} s", True
    except Exception as e:  # resets and the like: all count as errors
        error = f"{type(e).__name__}: {e}"
    if error is None and (not seen["done"] or seen["finish"] is None):
        error = "stream ended without a finish_reason and [DONE]"
    if error:
        return {"ok": False, "error": error, "status": seen["status"], "hung": hung}
    seconds = time.perf_counter() - t0
    return {"ok": True, "ttft": seen["ttft"] if seen["ttft"] is not None else seconds, "seconds": seconds,
            "tokens": seen["tokens"], "finish": seen["finish"], "status": 200, "hung": False}


async def load(url: str, args, clients: int) -> dict:
    """One phase: ``clients`` streaming clients for ``args.duration`` s, with the /health poller
    and (``--hostile``) the malformed requests running beside them."""
    import httpx

    results: list[dict] = []
    deadline = time.perf_counter() + args.duration
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)

    async def client_loop(i: int, client) -> None:
        k = 0
        while time.perf_counter() < deadline:
            body = {"model": "bench", "stream": True, "max_tokens": args.max_tokens, "temperature": 1.0,
                    "stream_options": {"include_usage": True},
                    "messages": [{"role": "user", "content": f"client {i} request {k}: 你好, tell me a story."}]}
            results.append(await one_request(client, url, body, args.request_timeout))
            k += 1

    start = time.perf_counter()
    async with httpx.AsyncClient(limits=limits, timeout=args.request_timeout) as client, \
            httpx.AsyncClient(timeout=5.0) as health_client:
        extra = [health_loop(health_client, url, deadline)]
        if args.hostile:
            extra.append(hostile_loop(url, deadline, args.hostile_interval, args.request_timeout))
        done = await asyncio.gather(*(client_loop(i, client) for i in range(clients)), *extra)
    elapsed = time.perf_counter() - start
    health = done[clients]
    hostile = done[clients + 1] if args.hostile else []
    return {"results": results, "elapsed": elapsed, "health": health, "hostile": hostile}


def summarize(clients: int, args, phase: dict, server_cpu: float) -> dict:
    results, elapsed = phase["results"], phase["elapsed"]
    ok = [r for r in results if r["ok"]]
    errors = [r["error"] for r in results if not r["ok"]]
    ttft = [r["ttft"] for r in ok]
    health_ok = [h for h in phase["health"] if h is not None]
    hostile = phase["hostile"]
    hostile_bad = [h for h in hostile if not (400 <= h["status"] < 500 and h["shape"])]
    out = {
        "clients": clients, "elapsed_s": round(elapsed, 2),
        "requests": len(results), "completed_streams": len(ok), "errors": len(errors),
        "error_examples": sorted(set(errors))[:5],
        "status_5xx": sum(r["status"] >= 500 for r in results) + sum(h["status"] >= 500 for h in hostile),
        "hung": sum(r["hung"] for r in results) + sum("Timeout" in h.get("error", "") for h in hostile),
        "requests_per_s": round(len(ok) / elapsed, 2),
        "ttft_median_s": round(statistics.median(ttft), 4) if ttft else None,
        "ttft_p99_s": round(percentile(ttft, 99), 4) if ttft else None,
        "stream_median_s": round(statistics.median(r["seconds"] for r in ok), 4) if ok else None,
        "completion_tokens_per_s": round(sum(r["tokens"] for r in ok) / elapsed, 1),
        "server_cpu_s": round(server_cpu, 2),
        "server_cpu_share": round(server_cpu / elapsed, 2),  # cores' worth of CPU the server got (1 = one core)
        "completion_tokens_per_server_cpu_s": round(sum(r["tokens"] for r in ok) / server_cpu, 1) if server_cpu else None,
        "finish_reasons": {f: sum(r["finish"] == f for r in ok) for f in sorted({r["finish"] for r in ok})},
        "health_polls": len(phase["health"]), "health_failed": len(phase["health"]) - len(health_ok),
        "health_p99_ms": round(percentile(health_ok, 99) * 1000, 1) if health_ok else None,
    }
    if args.hostile:
        by_case: dict[str, list[int]] = {}
        for h in hostile:
            by_case.setdefault(h["case"], []).append(h["status"])
        out["hostile_requests"] = len(hostile)
        out["hostile_not_4xx_openai"] = len(hostile_bad)
        out["hostile_statuses"] = {k: sorted(set(v)) for k, v in by_case.items()}
        out["hostile_failures"] = [{k: v for k, v in h.items()} for h in hostile_bad[:5]]
    out["verdict"] = "pass" if (out["status_5xx"] == 0 and out["hung"] == 0 and not hostile_bad
                                and out["health_failed"] == 0 and out["health_p99_ms"] is not None
                                and out["health_p99_ms"] < 250 and errors == []) else "fail"
    return out


# ---------------------------------------------------------------------------- hostile traffic and /health
def hostile_requests(host: str) -> list[tuple[str, bytes]]:
    """(name, raw HTTP/1.1 request bytes) of malformed, oversized and cross-site requests."""
    def post(path: str, body: bytes, *, ctype: str = "application/json", host_header: str = host,
             extra: str = "") -> bytes:
        head = (f"POST {path} HTTP/1.1\r\nHost: {host_header}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n")
        return head.encode() + body

    chat = "/v1/chat/completions"
    msg = '{"model": "bench", "messages": [{"role": "user", "content": %s}]}'
    big_chunk = b"x" * (1 << 20)
    chunked = (f"POST {chat} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
               f"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n").encode()
    chunked += b"".join(b"%x\r\n%s\r\n" % (len(big_chunk), big_chunk) for _ in range(6)) + b"0\r\n\r\n"
    return [
        ("bad json", post(chat, b'{"model": "bench", "messages": [')),
        ("not an object", post(chat, b"[1, 2, 3]")),
        ("no messages", post(chat, b'{"model": "bench"}')),
        ("lone surrogate", post(chat, (msg % '"\\ud800"').encode())),
        ("deep nesting", post(chat, b"[" * 100_000 + b"]" * 100_000)),
        ("huge integer", post(chat, b'{"model": "bench", "max_tokens": ' + b"9" * 5000 + b', "messages": []}')),
        ("bad temperature", post(chat, b'{"model": "bench", "temperature": 3, "messages": '
                                       b'[{"role": "user", "content": "hi"}]}')),
        ("huge n", post(chat, b'{"model": "bench", "n": 1000000, "messages": [{"role": "user", "content": "hi"}]}')),
        ("bool token ids", post("/v1/completions", b'{"model": "bench", "prompt": [true]}')),
        ("wrong content type", post(chat, (msg % '"hi"').encode(), ctype="text/plain")),
        ("foreign host", post(chat, (msg % '"hi"').encode(), host_header="evil.example")),
        ("foreign origin", post(chat, (msg % '"hi"').encode(), extra="Origin: http://evil.example\r\n")),
        ("64 MB content-length", (f"POST {chat} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                                  f"Content-Length: {64 << 20}\r\nConnection: close\r\n\r\n").encode()),
        ("6 MB chunked body", chunked),
        ("unknown model", post(chat, b'{"model": "nope", "messages": [{"role": "user", "content": "hi"}]}')),
    ]


async def send_raw(host: str, port: int, raw: bytes, timeout: float) -> tuple[int, bytes]:
    """Send raw bytes (stop early if the server answers first); return (status, body)."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    try:
        async def write_all() -> None:
            for k in range(0, len(raw), 1 << 16):
                writer.write(raw[k:k + (1 << 16)])
                await writer.drain()

        sender = asyncio.ensure_future(write_all())
        data = await asyncio.wait_for(reader.read(), timeout)
        sender.cancel()
        with contextlib.suppress(BaseException):
            await sender
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/1.1 ") else 0
    if b"transfer-encoding: chunked" in head.lower():  # de-chunk the (small) error body
        out, rest = b"", body
        while rest:
            size, _, rest = rest.partition(b"\r\n")
            n = int(size or b"0", 16)
            if n == 0:
                break
            out, rest = out + rest[:n], rest[n + 2:]
        body = out
    return status, body


def openai_error_shape(body: bytes) -> bool:
    try:
        err = json.loads(body)["error"]
        return {"message", "type", "param", "code"} <= set(err) and isinstance(err["message"], str)
    except (ValueError, KeyError, TypeError):
        return False


async def hostile_loop(url: str, deadline: float, interval: float, timeout: float) -> list[dict]:
    hostport = url.split("://", 1)[1]
    host, port = hostport.rsplit(":", 1)
    cases, out, k = hostile_requests(hostport), [], 0
    while time.perf_counter() < deadline:
        name, raw = cases[k % len(cases)]
        k += 1
        try:
            status, body = await send_raw(host, int(port), raw, timeout)
            out.append({"case": name, "status": status, "shape": openai_error_shape(body)})
        except Exception as e:  # a hang or a reset is a failure of the server, reported as such
            out.append({"case": name, "status": 0, "shape": False, "error": f"{type(e).__name__}: {e}"})
        await asyncio.sleep(interval)
    return out


async def health_loop(client, url: str, deadline: float) -> list[float | None]:
    """Latency of GET /health every 100 ms until the deadline (None: not a 200 within 5 s)."""
    out: list[float | None] = []
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        try:
            r = await client.get(url + "/health", timeout=5.0)
            out.append(time.perf_counter() - t0 if r.status_code == 200 else None)
        except Exception:
            out.append(None)
        await asyncio.sleep(max(0.0, 0.1 - (time.perf_counter() - t0)))
    return out


def process_cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used so far (Linux /proc; NaN elsewhere).

    On a machine shared with other jobs the wall-clock numbers depend on how much CPU the
    server got; tokens per server CPU-second do not.
    """
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q / 100 * (len(xs) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", default="32", help="concurrent clients; a comma list runs one phase each")
    ap.add_argument("--duration", type=float, default=30.0, help="seconds during which new requests start, per phase")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--max-concurrency", type=int, default=32, help="the server's --max-concurrency")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--request-timeout", type=float, default=120.0)
    ap.add_argument("--hostile", action="store_true", help="send malformed and oversized requests during each phase")
    ap.add_argument("--hostile-interval", type=float, default=0.05, help="seconds between hostile requests")
    ap.add_argument("--keep-log", metavar="FILE", help="save the server's log (one line per request) here")
    args = ap.parse_args()
    counts = [int(c) for c in str(args.clients).split(",")]
    args.clients = max(counts)

    phases = []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        info = make_model(model_dir, args.preset)
        proc, url = start_server(model_dir, args, Path(tmp) / "server.log")
        try:
            for clients in counts:
                cpu0 = process_cpu_seconds(proc.pid)
                phase = asyncio.run(load(url, args, clients))
                phases.append(summarize(clients, args, phase, process_cpu_seconds(proc.pid) - cpu0))
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(60)
        server_log = (Path(tmp) / "server.log").read_text()
        if args.keep_log:
            Path(args.keep_log).write_text(server_log)

    out = {"duration_s": args.duration, "max_tokens": args.max_tokens, "server_max_concurrency": args.max_concurrency,
           "model": info, "hostile": args.hostile, "phases": phases,
           "server_tracebacks": server_log.count("Traceback"), "server_exit_code": code,
           "cpu_threads": os.environ.get("OMP_NUM_THREADS", "default"),
           "verdict": "pass" if all(p["verdict"] == "pass" for p in phases) and code == 0 else "fail"}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
