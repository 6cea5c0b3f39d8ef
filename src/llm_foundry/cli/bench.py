"""`foundry bench`: run the benchmarks of the source checkout's bench/ folder, print one table.

Each benchmark is a script that prints one JSON object (see bench/); this command
runs them one after another (never in parallel: they time the machine) and
summarises the figures that matter.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

BENCHMARKS = {
    "peak": ["peak.py"],
    "train": ["train_throughput.py"],
    "budget": ["fixed_budget.py"],
    "decode": ["decode.py"],
}


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="run the benchmarks and print one table",
                       description="Run bench/peak.py, train_throughput.py, fixed_budget.py and decode.py "
                                   "(from the source checkout) and summarise them. Takes several minutes.")
    p.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), help="run only these benchmarks")
    p.add_argument("--quick", action="store_true", help="fewer repetitions and shorter budgets (a smoke run)")
    p.add_argument("--json", metavar="FILE", help="also write every benchmark's JSON to FILE")
    p.set_defaults(func=run)


def bench_dir() -> Path:
    from ..utils.errors import FoundryError

    folder = Path(__file__).resolve().parents[3] / "bench"
    if not (folder / "peak.py").is_file():
        raise FoundryError("the benchmarks live in the bench/ folder of a source checkout; run this from a clone "
                           "installed with `pip install -e .`")
    return folder


def _quick_args(name: str) -> list[str]:
    return {"peak": ["--reps", "1"], "train": ["--reps", "1", "--steps", "15", "--presets", "tiny", "tinygpt"],
            "budget": ["--budget", "10"], "decode": ["--reps", "1", "--new-tokens", "16"]}[name]


def run(args: argparse.Namespace) -> int:
    from rich.table import Table

    from ..utils.errors import FoundryError
    from ..utils.progress import console

    folder = bench_dir()
    results = {}
    for name in args.only or list(BENCHMARKS):
        cmd = [sys.executable, str(folder / BENCHMARKS[name][0]), *(_quick_args(name) if args.quick else [])]
        console.print(f"[bold]running[/] {' '.join(cmd[1:])}")
        proc = subprocess.run(cmd, capture_output=True, text=True)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        if proc.returncode != 0 or not lines:
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise FoundryError(f"benchmark {name} failed: {tail}")
        results[name] = json.loads(lines[-1])

    table = Table(title="llm-foundry benchmarks")
    table.add_column("benchmark")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for row in summary_rows(results):
        table.add_row(*row)
    console.print(table)
    if args.json:
        from ..utils.io import atomic_write_json

        atomic_write_json(args.json, results)
    return 0


def summary_rows(results: dict) -> list[tuple[str, str, str]]:
    """The headline figures of each benchmark's JSON, as table rows."""
    rows = []
    if "peak" in results:
        r = results["peak"]
        bf16 = "bf16 matmul 2048³" if r.get("bf16_native", True) else "bf16 matmul 256³ (emulated)"
        rows += [("peak", "fp32 matmul 2048³", f"{r['fp32_2048_tflops']:.3f} TFLOP/s"),
                 ("peak", bf16, f"{r['bf16_2048_tflops']:.4f} TFLOP/s")]
    if "train" in results:
        for preset, r in results["train"]["presets"].items():
            rows.append(("train", f"{preset}: tuned / fp32 eager",
                         f"{r['tuned']['tok_per_s']:,.0f} / {r['baseline']['tok_per_s']:,.0f} tok/s = {r['speedup']:.2f}x"))
            over = results["train"].get("mfu_over", "bf16")
            rows.append(("train", f"{preset}: MFU ({over} peak), peak RSS",
                         f"{100 * r['tuned']['mfu']:.1f}%, {r['tuned']['peak_rss_mib']:.0f} MiB"))
    if "budget" in results:
        r = results["budget"]
        rows.append(("budget", f"{r['config']}, {r['budget_s']:.0f} s held-out loss",
                     f"{r['heldout_loss_nats_per_char']:.4f} nats/char ({r['tokens_seen']:,} tokens)"))
    if "decode" in results:
        r = results["decode"]
        b1 = r["batch1"]
        rows += [("decode", "batch 1: KV cache / recompute", f"{b1['ours_kv_tok_s']:.0f} / {b1['ours_recompute_tok_s']:.0f} tok/s = {b1['speedup_vs_recompute']:.2f}x"),
                 ("decode", "batch 1: compiled / eager vs transformers",
                  f"{b1['ours_compiled_tok_s']:.0f} tok/s = {b1['speedup_vs_hf']:.2f}x / {b1['speedup_vs_hf_eager']:.2f}x"),
                 ("decode", "batch 8: compiled / eager vs transformers",
                  f"{r['batch8']['speedup_vs_hf']:.2f}x / {r['batch8']['speedup_vs_hf_eager']:.2f}x"),
                 ("decode", "time to first token / HF forward", f"{r['ttft']['ours_ms']:.1f} ms = {r['ttft']['ratio_to_best_hf_forward']:.2f}x"),
                 ("decode", "same, compiled", f"{r['ttft']['ours_compiled_ms']:.1f} ms = {r['ttft']['ratio_compiled_to_best_hf_forward']:.2f}x")]
    return rows
