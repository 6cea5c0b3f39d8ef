"""Validation loss at a fixed wall-clock budget: char-level tinyshakespeare.

Prepares ../shared/data/en/tinyshakespeare.txt (last 10% held out, contiguous), trains
a preset (default ``cpu_speedrun``, the whole recipe as data) for ``--budget`` seconds of
training time (start-up and evaluation excluded), then scores the whole held-out tail.
Prints one JSON object with the held-out loss in nats/char and the tokens seen.

    python bench/fixed_budget.py [--budget 60] [--config cpu_speedrun] [key=value ...]
    python bench/fixed_budget.py --config tiny --budget 120     # the core's acceptance run
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "data" / "en" / "tinyshakespeare.txt"


def main() -> None:
    from llm_foundry import Trainer
    from llm_foundry.config import load_config
    from llm_foundry.data import prepare_dataset, read_documents
    from llm_foundry.eval import evaluate_text
    from llm_foundry.models import load_model_dir

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", type=float, default=60.0, help="training seconds (default: 60)")
    p.add_argument("--config", default="cpu_speedrun", help="preset or YAML file (default: cpu_speedrun)")
    p.add_argument("--out", help="run folder to keep (default: a temp folder)")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()

    work = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench_budget_"))
    docs = read_documents([CORPUS])
    prepare_dataset(docs, "char", work / "data", val_fraction=0.1, show_progress=False)
    text = docs[0].text
    held_out = text[int(len(text) * 0.9):]

    model_cfg, train_cfg = load_config(args.config, [f"time_budget={args.budget}", "max_steps=1000000000", *args.overrides])
    t0 = time.perf_counter()
    summary = Trainer(model_cfg, train_cfg, work / "data", work / "run", quiet=True).run()
    wall = time.perf_counter() - t0
    bundle = load_model_dir(work / "run")
    m = evaluate_text(bundle.model, bundle.tokenizer, held_out, batch_size=16)
    print(json.dumps({
        "benchmark": "fixed_budget", "config": args.config, "overrides": args.overrides,
        "budget_s": args.budget, "train_time_s": summary["train_time"], "wall_s": round(wall, 1),
        "steps": summary["step"], "tokens_seen": summary["tokens_seen"], "tok_per_s": summary["tok_per_s"],
        "parameters": summary["parameters"], "heldout_loss_nats_per_char": round(m["loss"], 4),
        "heldout_bits_per_byte": round(m["bits_per_byte"], 4),
    }))


if __name__ == "__main__":
    main()
