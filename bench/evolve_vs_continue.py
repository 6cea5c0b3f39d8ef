"""Evolution vs plain continued training, same start, same held-out split, same compute budget B.

1. ``start``: a model trained briefly with ``foundry evolve --mode train`` (the h2q preset
   reduced by overrides, default d128 / 8 heads / 4 layers / ctx 128, byte tokenizer,
   AdamW 1e-4 as the preset says). Its state folder fixes the train/val/test split.
2. ``evolve``: a copy of the start runs ``--cycles`` evolution cycles. B is *all* the
   compute it spent, losing and early-stopped candidates, mining, self-generation
   and scoring included, in training-token equivalents (a forward-only token = 1/3).
3. ``continue``: another copy is trained on for exactly B training tokens
   (``round(B / (batch * ctx))`` optimizer steps) with the preset's own recipe
   (AdamW lr 1e-4, warmup + cosine, batch 8, clip 1.0), with the same step code.
4. ``continue_best_lr`` (``--hindsight``): the same, at the learning rate evolution
   ended with: how much of the gain is the learning rate alone.

Both are scored on the fixed validation split (the one evolution's gate used) and on
the test text (never used for any decision). Prints one JSON object.

    OMP_NUM_THREADS=1 nice -n 10 python bench/evolve_vs_continue.py [--data FILE] [--out DIR] [--cycles 8]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch

from llm_foundry.data import WindowLoader
from llm_foundry.evolve import EvolveOptions, Evolution, TrainOptions, heldout_report, run_steps, train, write_model_dir
from llm_foundry.evolve.local_train import Compute, Runtime
from llm_foundry.evolve.state import StatePaths, load_settings
from llm_foundry.models import load_model_dir
from llm_foundry.training import build_optimizers

ROOT = Path(__file__).resolve().parents[1]


def continue_training(state: Path, tokens: float, lr: float | None, seed: int) -> dict:
    """Train the champion of ``state`` on for ``tokens`` training tokens; it becomes the new champion."""
    paths = StatePaths(state)
    model_cfg, cfg, _ = load_settings(paths)
    if lr is not None:
        cfg = dataclasses.replace(cfg, lr=lr)
    seq_len = min(cfg.seq_len or model_cfg.max_seq_len, model_cfg.max_seq_len)
    rt = Runtime.open(paths, seq_len, cfg.batch_size, cfg.eval_batches, "cpu", "auto", model_cfg.dim)
    bundle = load_model_dir(paths.champion, rt.device)
    steps = max(1, round(tokens / (cfg.batch_size * seq_len)))
    loader = WindowLoader(rt.dataset, "train", cfg.batch_size, seq_len, seed + 1, rt.device)
    compute = Compute()
    t0 = time.perf_counter()
    run_steps(bundle.model, build_optimizers(bundle.model, cfg), loader.batch, cfg, 0, steps, steps, rt.amp_dtype,
              compute=compute)
    write_model_dir(paths.champion, bundle.model, bundle.tokenizer, steps)
    return {"steps": steps, "train_tokens": compute.train_tokens, "lr": cfg.lr, "time_s": round(time.perf_counter() - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "zh" / "chinese.txt"))
    ap.add_argument("--out", help="work folder (default: a temporary one)")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--ctx", type=int, default=128)
    ap.add_argument("--start-steps", type=int, default=300, help="training steps of the common start")
    ap.add_argument("--cycles", type=int, default=8)
    ap.add_argument("--population", type=int, default=3)
    ap.add_argument("--cycle-steps", type=int, default=80)
    ap.add_argument("--min-improvement", type=float, default=0.001)
    ap.add_argument("--self-samples", type=int, default=4)
    ap.add_argument("--hindsight", action="store_true", help="also continue at evolution's final learning rate")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="evolve_vs_continue_"))
    out.mkdir(parents=True, exist_ok=True)
    start, evo, cont = out / "start", out / "evolve", out / "continue"
    overrides = [f"model.dim={args.dim}", f"model.n_layers={args.layers}", f"model.max_seq_len={args.ctx}"]
    t0 = time.perf_counter()
    if not (start / "champion").is_dir():
        train(start, TrainOptions(data_dir=args.data, epochs=1, steps_per_epoch=args.start_steps,
                                  overrides=overrides, quiet=True))
    result = {"data": args.data, "model": {"dim": args.dim, "n_layers": args.layers, "n_heads": 8, "ctx": args.ctx,
                                           "tokenizer": "byte"},
              "start": {"steps": args.start_steps, **heldout_report(start, device="cpu")}, "start_time_s": round(time.perf_counter() - t0, 1)}
    print(json.dumps({"start": result["start"]}), flush=True)

    for d in (evo, cont):
        shutil.rmtree(d, ignore_errors=True)
        shutil.copytree(start, d)
    t0 = time.perf_counter()
    stats = Evolution(evo, EvolveOptions(cycles=args.cycles, population=args.population, cycle_steps=args.cycle_steps,
                                         min_improvement=args.min_improvement, self_samples=args.self_samples,
                                         device="cpu", quiet=True)).run()
    budget = stats["compute"]["total"]
    result["evolve"] = {**heldout_report(evo, device="cpu"), "time_s": round(time.perf_counter() - t0, 1),
                        "compute": stats["compute"], "cycles": stats["total_evolutions"],
                        "accepted": stats["successful_evolutions"], "rejected": stats["failed_evolutions"],
                        "final_hparams": stats["champion_hparams"],
                        "per_cycle": [{"cycle": h["cycle"], "decision": h["decision"], "after": h["champion_loss_after"],
                                       "best_lr": h["candidates"][h["best_candidate"]]["hparams"]["lr"]
                                       if h["best_candidate"] is not None else None} for h in stats["history"]]}
    print(json.dumps({"evolve": result["evolve"]}), flush=True)

    result["budget_B_tokens"] = budget
    result["continue"] = {**continue_training(cont, budget, None, 0), **heldout_report(cont, device="cpu")}
    print(json.dumps({"continue": result["continue"]}), flush=True)
    if args.hindsight:
        best = out / "continue_best_lr"
        shutil.rmtree(best, ignore_errors=True)
        shutil.copytree(start, best)
        result["continue_best_lr"] = {**continue_training(best, budget, stats["champion_hparams"]["lr"], 0),
                                      **heldout_report(best, device="cpu")}
    result["evolution_wins"] = result["evolve"]["val_loss"] < result["continue"]["val_loss"]
    result["evolution_wins_on_test"] = result["evolve"].get("test_loss", 0) < result["continue"].get("test_loss", 0)
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
