"""Example 01: basic training, from built-in text to a trained model.

What it shows:
  1. build a corpus with no download: Python's own reference docs
     (``llm_foundry.data.builtin_corpus()``, ~460 KB of English);
  2. tokenize it into a data folder with the char tokenizer (``prepare_dataset``);
  3. train the ``tiny`` preset briefly with ``Trainer``;
  4. print the validation metrics (loss, perplexity, bits per byte) and the loss curve;
  5. load the model folder back and sample from it.

Run it from the repository root:

    python examples/01_basic_training.py                 # about a minute of training
    python examples/01_basic_training.py --tiny          # a few seconds (what the tests run)
    python examples/01_basic_training.py --out runs/my_first_model

``--tiny`` (or the environment variable ``FOUNDRY_EXAMPLES_TINY=1``) shrinks the model
and the run so that it finishes in seconds; the numbers are then only a smoke test.
Output goes to ``--out`` (default ``runs/examples/01_basic_training``), which is
replaced on a re-run.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from llm_foundry import Generator, Trainer
from llm_foundry.config import load_config
from llm_foundry.data import builtin_corpus, prepare_dataset
from llm_foundry.models import load_model_dir

from _common import example_parser, fresh_dir, parse_example_args

DEFAULT_OUT = "runs/examples/01_basic_training"

# --tiny: a very small model and a few steps, so the whole script takes seconds.
TINY_OVERRIDES = [
    "model.dim=32", "model.n_layers=2", "model.n_heads=2", "model.max_seq_len=64",
    "train.batch_size=8", "train.max_steps=30", "train.warmup_steps=5", "train.lr=3e-3",
    "train.eval_batches=4", "train.eval_interval=15", "train.log_interval=5", "train.checkpoint_interval=0",
]
# Default: the real `tiny` preset (~0.8M parameters) for a fixed wall-clock budget.
FULL_OVERRIDES = [
    "train.time_budget=60", "train.max_steps=100000", "train.eval_interval=50", "train.log_interval=5",
    "train.warmup_steps=20", "train.checkpoint_interval=0",
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = example_parser("Train the tiny preset on Python's bundled docs.", DEFAULT_OUT)
    return parse_example_args(p, argv)



def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = fresh_dir(Path(args.out))
    print(f"mode: {'tiny' if args.tiny else 'full'} | output: {out}")

    # 1. A corpus with no download: one document per topic of Python's reference docs.
    docs = builtin_corpus()
    print(f"[1] corpus: {len(docs)} documents, {sum(len(d.text) for d in docs):,} characters")

    # 2. Tokenize into a data folder (tokenizer.json, train/val shards, meta.json).
    #    The char tokenizer gives one id per character; 10% of the documents are held out.
    meta = prepare_dataset(docs, "char", out / "data", val_fraction=0.1, show_progress=False)
    splits = ", ".join(f"{name} {info['tokens']:,} tokens" for name, info in meta["splits"].items())
    print(f"[2] prepared {out / 'data'}: {meta['tokenizer']} tokenizer, vocab {meta['vocab_size']}, {splits}")

    # 3. Configs: the `tiny` preset plus key=value overrides (the same syntax as `foundry train`).
    #    Trainer sets model_cfg.vocab_size from the data folder's tokenizer.
    model_cfg, train_cfg = load_config("tiny", TINY_OVERRIDES if args.tiny else FULL_OVERRIDES)
    print(f"[3] model: dim {model_cfg.dim}, {model_cfg.n_layers} layers, {model_cfg.n_heads} heads, "
          f"context {model_cfg.max_seq_len} | train: batch {train_cfg.batch_size}, lr {train_cfg.lr}, "
          f"max_steps {train_cfg.max_steps}, time_budget {train_cfg.time_budget}")

    # 4. Train. The run folder is a model folder (config.json, model.safetensors,
    #    tokenizer.json) plus training_state.pt, run_config.json and metrics.jsonl.
    run_dir = out / "run"
    summary = Trainer(model_cfg, train_cfg, out / "data", run_dir).run()
    print(f"[4] trained {summary['step']} steps, {summary['tokens_seen']:,} tokens, "
          f"{summary['parameters']:,} parameters, {summary['tok_per_s']:,.0f} tokens/s")

    # 5. Validation metrics. A model that learned nothing scores ln(vocab) nats/token.
    uniform = math.log(meta["vocab_size"])
    print(f"[5] val loss {summary['val_loss']:.4f} nats/token | perplexity {summary['val_perplexity']:.2f} | "
          f"{summary['val_bits_per_byte']:.3f} bits/byte   (uniform guess: {uniform:.4f})")

    #    metrics.jsonl holds one JSON line per log interval (train loss) and per eval (val_*).
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    curve = [f"{r['step']}:{r['loss']:.2f}" for r in records if "loss" in r]
    print("    train loss by step: " + "  ".join(curve))

    # 6. Load the model folder back (config, weights and tokenizer are checked against
    #    each other) and sample. Any model folder works the same way.
    bundle = load_model_dir(run_dir)
    print(f"[6] reloaded {run_dir}: step {bundle.step}, vocab {bundle.model.cfg.vocab_size}")
    gen = Generator(bundle.model, bundle.tokenizer)
    prompt = "The if statement"
    sample = gen.generate(prompt, max_new_tokens=120, temperature=0.7, top_p=0.95, seed=0)
    print(f"    sample: {json.dumps(prompt + sample, ensure_ascii=False)}")
    print(f"done: model folder {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
