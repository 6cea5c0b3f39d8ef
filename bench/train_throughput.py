"""Training throughput: our Trainer (tuned path) vs a plain fp32 eager loop, same model, same run.

For each preset it reports tokens/s, ms/step, model FLOPs utilisation (FLOPs per token
from ``MiniLLM.flops_per_token``: 6·N plus attention, over the machine's 2048^3 matmul peak
measured at the start of this run: bf16's, or fp32's on a CPU where bf16 is slower, i.e. has
no native bf16 (AVX2-only machines emulate it, ~100x slower than fp32)) and the peak RSS of
the process that trained.
Each measurement runs in its own subprocess so RSS and warm-up do not leak between them;
the figure is the median over ``--reps`` repetitions. Prints one JSON object.

    python bench/train_throughput.py [--presets tiny tinygpt small] [--steps 40] [--reps 3] [key=value ...]

``key=value`` overrides go to the tuned path only (e.g. ``compile=true``).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _data_dir(work: Path) -> Path:
    from llm_foundry.data import builtin_corpus, prepare_dataset

    out = work / "data"
    if not (out / "meta.json").exists():
        prepare_dataset(builtin_corpus(), "char", out, show_progress=False)
    return out


def run_tuned(preset: str, steps: int, overrides: list[str], work: Path) -> dict:
    """Our Trainer exactly as a user runs it; throughput from its own metrics log."""
    from llm_foundry import Trainer
    from llm_foundry.config import load_config

    model_cfg, train_cfg = load_config(preset, [f"max_steps={steps}", "eval_interval=0", "checkpoint_interval=0",
                                                "log_interval=5", "batch_size=16", *overrides])
    run_dir = Path(tempfile.mkdtemp(dir=work, prefix=f"run_{preset}_"))
    trainer = Trainer(model_cfg, train_cfg, _data_dir(work), run_dir, quiet=True)
    trainer.run()
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    windows = [r["tok_per_s"] for r in records if "tok_per_s" in r][2:]  # skip warm-up (and compile) windows
    tok_s = statistics.median(windows)
    return {"tok_per_s": tok_s, "flops_per_token": trainer.model.flops_per_token(trainer.seq_len),
            "tokens_per_step": train_cfg.batch_size * trainer.seq_len, "precision": str(trainer.amp_dtype or "fp32")}


def run_baseline(preset: str, steps: int, work: Path) -> dict:
    """What the reference trainers do on a CPU: fp32, eager, default AdamW, same model and batch."""
    import torch

    from llm_foundry import MiniLLM
    from llm_foundry.config import load_config
    from llm_foundry.data import TokenDataset, WindowLoader

    model_cfg, train_cfg = load_config(preset, ["batch_size=16"])
    ds = TokenDataset(_data_dir(work))
    model_cfg.vocab_size = ds.tokenizer.vocab_size
    torch.manual_seed(0)
    model = MiniLLM(model_cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=train_cfg.lr, weight_decay=0.1)
    loader = WindowLoader(ds, "train", train_cfg.batch_size, model_cfg.max_seq_len, seed=0)
    times = []
    for step in range(steps):
        x, y = loader.batch(step)
        t0 = time.perf_counter()
        _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    tokens = train_cfg.batch_size * model_cfg.max_seq_len
    return {"tok_per_s": tokens / statistics.median(times[3:]), "flops_per_token": model.flops_per_token(model_cfg.max_seq_len),
            "tokens_per_step": tokens, "precision": "fp32"}


def one(args: argparse.Namespace) -> None:
    """Child process: one measurement, printed as JSON with the peak RSS."""
    work = Path(args.work)
    if args.mode == "baseline":
        result = run_baseline(args.one, args.steps, work)
    else:
        result = run_tuned(args.one, args.steps, args.overrides, work)
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def measure(preset: str, mode: str, steps: int, overrides: list[str], work: Path) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--one", preset, "--mode", mode, "--steps", str(steps),
           "--work", str(work), *overrides]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{preset}/{mode} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", nargs="+", default=["tiny", "tinygpt", "small"])
    p.add_argument("--steps", type=int, default=40, help="optimizer steps per measurement (default: 40)")
    p.add_argument("--reps", type=int, default=3, help="repetitions; medians are reported (default: 3)")
    p.add_argument("--one", help=argparse.SUPPRESS)
    p.add_argument("--mode", choices=["baseline", "tuned"], help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", help="key=value overrides for the tuned path")
    args = p.parse_args()
    if args.one:
        one(args)
        return

    sys.path.insert(0, str(HERE))
    from peak import peak_tflops

    import torch

    fp32_peak, bf16_peak = peak_tflops(torch.float32), peak_tflops(torch.bfloat16)
    peak, peak_dtype = (bf16_peak, "bf16") if bf16_peak >= fp32_peak else (fp32_peak, "fp32")
    work = Path(tempfile.mkdtemp(prefix="bench_tp_"))
    _data_dir(work)
    results = {}
    for preset in args.presets:
        row = {}
        for mode in ("baseline", "tuned"):
            reps = [measure(preset, mode, args.steps, args.overrides if mode == "tuned" else [], work) for _ in range(args.reps)]
            tok_s = statistics.median(r["tok_per_s"] for r in reps)
            fpt = reps[0]["flops_per_token"]
            row[mode] = {
                "tok_per_s": round(tok_s, 1),
                "ms_per_step": round(1000 * reps[0]["tokens_per_step"] / tok_s, 2),
                "mfu": round(tok_s * fpt / (peak * 1e12), 4),
                "peak_rss_mib": round(max(r["peak_rss_mib"] for r in reps), 1),
                "precision": reps[0]["precision"],
                "all_tok_per_s": [round(r["tok_per_s"], 1) for r in reps],
            }
        row["speedup"] = round(row["tuned"]["tok_per_s"] / row["baseline"]["tok_per_s"], 3)
        results[preset] = row
    print(json.dumps({"benchmark": "train_throughput", "bf16_peak_tflops": round(bf16_peak, 4),
                      "fp32_peak_tflops": round(fp32_peak, 4), "mfu_over": peak_dtype, "steps": args.steps,
                      "reps": args.reps, "tuned_overrides": args.overrides, "presets": results}))


if __name__ == "__main__":
    main()
