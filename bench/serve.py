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

    python bench/serve.py [--clients 32] [--duration 30] [--max-tokens 64] [--preset tiny]
"""

from __future__ import annotations

import argparse
import asyncio
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
    """Send one streaming request; returns {"ok", "ttft", "seconds", "tokens", "finish"} or {"ok": False, "error"}."""
    t0 = time.perf_counter()
    seen = {"ttft": None, "finish": None, "done": False, "tokens": 0}

    async def run() -> str | None:
        async with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
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

    try:
        error = await asyncio.wait_for(run(), timeout)
    except Exception as e:  # timeouts, resets: all count as errors
        error = f"{type(e).__name__}: {e}"
    if error is None and (not seen["done"] or seen["finish"] is None):
        error = "stream ended without a finish_reason and [DONE]"
    if error:
        return {"ok": False, "error": error}
    seconds = time.perf_counter() - t0
    return {"ok": True, "ttft": seen["ttft"] if seen["ttft"] is not None else seconds, "seconds": seconds,
            "tokens": seen["tokens"], "finish": seen["finish"]}


async def load(url: str, args) -> tuple[list[dict], float]:
    import httpx

    results: list[dict] = []
    deadline = time.perf_counter() + args.duration
    limits = httpx.Limits(max_connections=args.clients + 4, max_keepalive_connections=args.clients + 4)

    async def client_loop(i: int, client) -> None:
        k = 0
        while time.perf_counter() < deadline:
            body = {"model": "bench", "stream": True, "max_tokens": args.max_tokens, "temperature": 1.0,
                    "stream_options": {"include_usage": True},
                    "messages": [{"role": "user", "content": f"client {i} request {k}: 你好, tell me a story."}]}
            results.append(await one_request(client, url, body, args.request_timeout))
            k += 1

    start = time.perf_counter()
    async with httpx.AsyncClient(limits=limits, timeout=args.request_timeout) as client:
        await asyncio.gather(*(client_loop(i, client) for i in range(args.clients)))
    return results, time.perf_counter() - start


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
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--duration", type=float, default=30.0, help="seconds during which new requests start")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--max-concurrency", type=int, default=32, help="the server's --max-concurrency")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--request-timeout", type=float, default=120.0)
    ap.add_argument("--keep-log", metavar="FILE", help="save the server's log (one line per request) here")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        info = make_model(model_dir, args.preset)
        proc, url = start_server(model_dir, args, Path(tmp) / "server.log")
        try:
            cpu0 = process_cpu_seconds(proc.pid)
            results, elapsed = asyncio.run(load(url, args))
            server_cpu = process_cpu_seconds(proc.pid) - cpu0
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(60)
        server_log = (Path(tmp) / "server.log").read_text()
        if args.keep_log:
            Path(args.keep_log).write_text(server_log)
        log_lines = server_log.count('"POST /v1/chat/completions" 200')

    ok = [r for r in results if r["ok"]]
    errors = [r["error"] for r in results if not r["ok"]]
    ttft = [r["ttft"] for r in ok]
    out = {
        "clients": args.clients, "duration_s": args.duration, "elapsed_s": round(elapsed, 2),
        "max_tokens": args.max_tokens, "server_max_concurrency": args.max_concurrency, "model": info,
        "requests": len(results), "completed_streams": len(ok), "errors": len(errors),
        "error_examples": sorted(set(errors))[:5],
        "requests_per_s": round(len(ok) / elapsed, 2),
        "ttft_median_s": round(statistics.median(ttft), 4) if ttft else None,
        "ttft_p99_s": round(percentile(ttft, 99), 4) if ttft else None,
        "stream_median_s": round(statistics.median(r["seconds"] for r in ok), 4) if ok else None,
        "stream_max_s": round(max(r["seconds"] for r in ok), 4) if ok else None,
        "completion_tokens_per_s": round(sum(r["tokens"] for r in ok) / elapsed, 1),
        "server_cpu_s": round(server_cpu, 2),
        "server_cpu_share": round(server_cpu / elapsed, 2),  # cores' worth of CPU the server got (1 = one core)
        "completion_tokens_per_server_cpu_s": round(sum(r["tokens"] for r in ok) / server_cpu, 1) if server_cpu else None,
        "finish_reasons": {f: sum(r["finish"] == f for r in ok) for f in sorted({r["finish"] for r in ok})},
        "server_logged_200": log_lines, "server_exit_code": code,
        "cpu_threads": os.environ.get("OMP_NUM_THREADS", "default"),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
