"""Data-parallel training throughput (torchrun: DDP and FSDP2) and activation checkpointing's cost.

Part 1, throughput: `foundry train` exactly as a user runs it, once as one process and once
under ``torchrun --nproc_per_node N`` with ``train.parallel=ddp`` and ``fsdp``, the same global
batch each time; tokens/s is the median of the run's own ``metrics.jsonl`` windows (rank 0
logs the global batch's tokens), warm-up windows skipped.

* CPU: the machine's threads are split between the processes (``OMP_NUM_THREADS`` = threads / N
  each; the one-process run gets them all), so the figures compare the same cores used two ways.
* GPU: one process per GPU (``--nproc`` defaults to the GPU count; with one GPU, torchrun's one
  process still wraps the model in DDP or FSDP, so their cost on one card shows), bf16 autocast and
  ``torch.compile``, and MFU over the card's bf16 matmul peak measured in this run (8192^3).

Part 2, activation checkpointing: one process, ``train.activation_checkpointing`` off and on, on
``--ac-preset`` (default ``small``): ms per step and peak memory (the GPU's peak allocation, or on a
CPU the peak RSS of the process that trained; both include the weights and optimizer state).

Each measurement runs in its own process. Prints one JSON object.

    python bench/distributed.py [--preset small] [--nproc 2] [--steps 30] [--ac-preset small] [--skip-ac]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _data_dir(work: Path) -> Path:
    from llm_foundry.data import builtin_corpus, prepare_dataset

    out = work / "data"
    if not (out / "meta.json").exists():
        prepare_dataset(builtin_corpus(), "char", out, show_progress=False)
    return out


def _settings(steps: int, gpu: bool) -> list[str]:
    # grad_accum 2: under 2 processes each takes one micro-batch of every step (the global batch stays).
    common = [f"max_steps={steps}", "eval_interval=0", "checkpoint_interval=0", "log_interval=5", "batch_size=8",
              "grad_accum=2", "warmup_steps=2"]
    return common + (["device=cuda", "precision=bf16", "compile=true"] if gpu else ["device=cpu"])


def _tok_per_s(run: Path) -> float:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    windows = [r["tok_per_s"] for r in records if "tok_per_s" in r][2:]  # warm-up (and compile) windows skipped
    if not windows:
        raise SystemExit(f"{run}: too few steps to measure; raise --steps")
    return statistics.median(windows)


def train_run(preset: str, nproc: int, parallel: str | None, steps: int, gpu: bool, threads: int, work: Path) -> dict:
    """One `foundry train`, under torchrun with ``parallel`` (None: plain, one process); its tokens/s."""
    run = Path(tempfile.mkdtemp(dir=work, prefix=f"run_{preset}_{nproc}_{parallel}_"))
    train = ["-m", "llm_foundry", "train", "--preset", preset, "--data", str(_data_dir(work)), "--out", str(run),
             "--quiet", *_settings(steps, gpu), f"parallel={parallel or 'ddp'}"]
    if parallel is not None:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
               "127.0.0.1", "--master_port", str(_free_port()), *train]
    else:
        cmd = [sys.executable, *train]
    per_process = threads if gpu else max(1, threads // nproc)
    env = {**os.environ, "OMP_NUM_THREADS": str(per_process)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{preset} {nproc}x{parallel} failed:\n{proc.stderr[-3000:]}")
    row = {"tok_per_s": round(_tok_per_s(run), 1), "processes": nproc, "threads_per_process": per_process}
    if gpu:
        import torch

        from llm_foundry.models import MiniLLM
        from llm_foundry.models.model_dir import load_model_config

        with torch.device("meta"):  # the shape alone: FLOPs per token as trained (the data's vocabulary)
            row["flops_per_token"] = MiniLLM(load_model_config(run)).flops_per_token()
    return row


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ac_child(preset: str, steps: int, gpu: bool, checkpointing: bool, work: Path) -> None:
    """Child process: one run with activation checkpointing on or off; prints ms/step and peak memory."""
    import torch

    from llm_foundry import Trainer
    from llm_foundry.config import load_config

    model_cfg, train_cfg = load_config(preset, [*_settings(steps, gpu), f"activation_checkpointing={checkpointing}"])
    run = Path(tempfile.mkdtemp(dir=work, prefix=f"ac_{preset}_{checkpointing}_"))
    trainer = Trainer(model_cfg, train_cfg, _data_dir(work), run, quiet=True)
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    trainer.run()
    tokens_per_step = train_cfg.batch_size * trainer.seq_len * train_cfg.grad_accum
    peak = (torch.cuda.max_memory_allocated() if gpu else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    print(json.dumps({"ms_per_step": round(1000 * tokens_per_step / _tok_per_s(run), 2),
                      "peak_memory_mib": round(peak / 2**20, 1),
                      "memory": "GPU peak allocation" if gpu else "peak RSS"}))


def ac_run(preset: str, steps: int, gpu: bool, checkpointing: bool, work: Path) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--ac-child", preset, "--steps", str(steps),
           "--work", str(work), *(["--checkpointing"] if checkpointing else []), *(["--gpu"] if gpu else [])]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"activation checkpointing {checkpointing} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def gpu_bf16_peak_tflops(n: int = 8192, seconds: float = 1.0) -> float:
    """The card's bf16 matmul TFLOP/s at ``n``^3 (the MFU denominator)."""
    import torch

    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    iters, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        iters += 1
        torch.cuda.synchronize()
    return 2 * n ** 3 * iters / (time.perf_counter() - start) / 1e12


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", nargs="+", default=["small"], help="presets for the throughput part (default: small; "
                   "on a GPU e.g. small base)")
    p.add_argument("--nproc", type=int, help="processes of the torchrun runs (default: 2 on CPU, the GPU count on GPUs)")
    p.add_argument("--steps", type=int, default=30, help="optimizer steps per run (default: 30)")
    p.add_argument("--ac-preset", default="small", help="preset of the activation checkpointing part (default: small)")
    p.add_argument("--skip-ac", action="store_true", help="throughput only")
    p.add_argument("--ac-child", help=argparse.SUPPRESS)
    p.add_argument("--checkpointing", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--gpu", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.ac_child:
        ac_child(args.ac_child, args.steps, args.gpu, args.checkpointing, Path(args.work))
        return

    import torch

    gpu = torch.cuda.is_available()
    threads = torch.get_num_threads()
    nproc = args.nproc or (torch.cuda.device_count() if gpu else 2)
    work = Path(tempfile.mkdtemp(prefix="bench_dist_"))
    _data_dir(work)
    peak = gpu_bf16_peak_tflops() if gpu else None
    out: dict = {"benchmark": "distributed", "device": torch.cuda.get_device_name() if gpu else "cpu",
                 "threads": threads, "nproc": nproc, "steps": args.steps, "presets": {}}
    if gpu:
        out["bf16_peak_tflops"] = round(peak, 1)
    for preset in args.preset:
        rows = {"1 process": train_run(preset, 1, None, args.steps, gpu, threads, work)}
        if nproc > 1 or gpu:
            for parallel in ("ddp", "fsdp"):
                rows[f"{nproc} processes, {parallel}"] = train_run(preset, nproc, parallel, args.steps, gpu, threads, work)
        if gpu:
            for row in rows.values():  # per GPU: the run's tokens/s over its GPUs' peak
                row["mfu"] = round(row["tok_per_s"] * row.pop("flops_per_token") / (peak * 1e12 * row["processes"]), 4)
        out["presets"][preset] = rows
    if not args.skip_ac:
        out["activation_checkpointing"] = {"preset": args.ac_preset, **{
            ("on" if flag else "off"): ac_run(args.ac_preset, args.steps, gpu, flag, work) for flag in (False, True)}}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
