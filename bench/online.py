"""Online learning: pulse latency, replay-store append rate, memory while 100,000 lines are fed.

Prints one JSON object:

- ``pulse``: median seconds of a 20-step pulse (batch 4, context 256, the tinygpt preset)
  on a store filled with ../shared/data/zh/tang300.txt, so every window is a full 256
  characters; next to it, in the same run, the same number of plain train steps on
  random ids (the core's step: no replay sampling, no EMA), the baseline;
- ``store``: lines/s of bulk appends (the /load_txt path: group fsync) and of
  per-line fsync appends (the typed-line path), against plain buffered file writes;
- ``memory``: RSS of a learner while 100,000 lines are fed through it (stored, their
  characters added, one training step every 1,000 lines), measured after the first
  10,000 lines (model, optimizer and caches warm) and at the end.

    python bench/online.py [--pulses 7] [--lines 100000]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "data" / "zh" / "tang300.txt"


def rss_mib() -> float:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def corpus_lines() -> list[str]:
    return [line for line in CORPUS.read_text(encoding="utf-8").splitlines() if line.strip()]


def bench_pulse(work: Path, pulses: int, steps: int = 20) -> dict:
    import torch

    from llm_foundry.online import OnlineLearner
    from llm_foundry.training import build_optimizers
    from llm_foundry.training.optim import optimizer_step
    from llm_foundry.utils.device import autocast_context

    learner = OnlineLearner.open(work / "pulse", preset="tinygpt", settings={"steps": steps})
    try:
        for line in corpus_lines():
            learner.add(line, durable=False, typed=False)
        learner.store.sync()
        x, _ = learner.batch()
        assert tuple(x.shape) == (4, 256), x.shape  # full windows: batch 4, context 256
        learner.pulse(steps)  # warm-up (allocations, oneDNN kernel choice)
        times = [learner.pulse(steps).seconds for _ in range(pulses)]
        # Baseline: the same model and optimizer setup, plain steps on random ids.
        model = learner.model
        opts = build_optimizers(model, learner.train_cfg)
        ids = torch.randint(0, learner.tokenizer.vocab_size, (4, 257))
        base = []
        for rep in range(pulses + 1):
            t0 = time.perf_counter()
            for _ in range(steps):
                with autocast_context(learner.device, learner.amp_dtype):
                    _, loss = model(ids[:, :-1], ids[:, 1:])
                loss.backward()
                optimizer_step(model, opts, 1.0)
            if rep:
                base.append(time.perf_counter() - t0)
        return {
            "steps": steps, "batch": 4, "context": 256, "preset": "tinygpt",
            "precision": str(learner.amp_dtype).replace("torch.", "") if learner.amp_dtype else "fp32",
            "vocab": learner.tokenizer.vocab_size, "parameters": model.num_parameters(),
            "median_s": round(statistics.median(times), 3), "min_s": round(min(times), 3),
            "max_s": round(max(times), 3), "ms_per_step": round(1000 * statistics.median(times) / steps, 1),
            "baseline_plain_steps_median_s": round(statistics.median(base), 3),
            "target_s": 1.0, "meets_target": statistics.median(times) < 1.0,
        }
    finally:
        learner.close()


def bench_store(work: Path, lines: list[str], n: int) -> dict:
    from llm_foundry.online import ReplayStore

    texts = [f"{lines[i % len(lines)]} {i}" for i in range(n)]
    with ReplayStore(work / "bulk") as store:
        t0 = time.perf_counter()
        for t in texts:
            store.append(t)
            store.maybe_sync()
        store.sync()
        bulk = n / (time.perf_counter() - t0)
    k = 300
    with ReplayStore(work / "durable") as store:
        t0 = time.perf_counter()
        for t in texts[:k]:
            store.append(t, durable=True, typed=True)
        durable = k / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    with open(work / "plain.txt", "w", encoding="utf-8") as f:
        for t in texts:
            f.write(t + "\n")
        f.flush()
        os.fsync(f.fileno())
    plain = n / (time.perf_counter() - t0)
    return {"lines": n, "bulk_lines_per_s": round(bulk), "target_lines_per_s": 10_000, "meets_target": bulk >= 10_000,
            "fsync_per_line_lines_per_s": round(durable), "baseline_plain_file_lines_per_s": round(plain)}


def bench_memory(work: Path, lines: list[str], n: int) -> dict:
    from llm_foundry.online import OnlineLearner

    learner = OnlineLearner.open(work / "memory", preset="tinygpt")
    try:
        learner.pulse(1)
        start = None
        peak = 0.0
        t0 = time.perf_counter()
        for i in range(n):
            learner.add(f"{lines[i % len(lines)]} {i}", durable=False, typed=False)
            learner.store.maybe_sync()
            if i % 1000 == 999:
                learner.pulse(1)
                peak = max(peak, rss_mib())
            if i == 9_999:
                start = rss_mib()
        learner.store.sync()
        end = rss_mib()
        return {"lines": n, "rss_after_10k_mib": round(start, 1), "rss_end_mib": round(end, 1),
                "rss_peak_mib": round(peak, 1), "growth_mib": round(end - start, 1), "target_growth_mib": 50,
                "meets_target": end - start <= 50, "store_mib": round(learner.store.disk_bytes / 2**20, 1),
                "cache_kib": round(learner.store.cached_bytes / 1024, 1), "seconds": round(time.perf_counter() - t0, 1)}
    finally:
        learner.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pulses", type=int, default=7, help="pulses to time (default: 7)")
    p.add_argument("--lines", type=int, default=100_000, help="lines for the store and memory runs (default: 100000)")
    args = p.parse_args()

    import torch

    lines = corpus_lines()
    with tempfile.TemporaryDirectory(prefix="bench_online_") as tmp:
        work = Path(tmp)
        load = os.getloadavg()[0]
        memory = bench_memory(work, lines, args.lines)  # first: RSS of a fresh process
        pulse = bench_pulse(work, args.pulses)
        store = bench_store(work, lines, args.lines)
    print(json.dumps({
        "benchmark": "online", "threads": torch.get_num_threads(), "load_avg_1m_at_start": round(load, 2),
        "pulse": pulse, "store": store, "memory": memory,
    }))


if __name__ == "__main__":
    main()
