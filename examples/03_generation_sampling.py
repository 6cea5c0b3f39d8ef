"""Example 03: generation and sampling with ``Generator``.

What it shows, on one model:
  1. greedy decoding (``temperature=0``): the same text every time;
  2. temperature: low = safe and repetitive, high = varied and noisy;
  3. top-k and top-p (nucleus) filtering; ``top_k=1`` is greedy again;
  4. stop strings: generation ends *before* the first stop string;
  5. seeds: the same seed gives the same text, another seed another text;
  6. streaming with ``Generator.stream``: pieces arrive as they are decoded, and joined
     they equal ``Generator.generate`` with the same settings.

Run it from the repository root:

    python examples/03_generation_sampling.py                    # trains a small model first (~1 min)
    python examples/03_generation_sampling.py --model runs/examples/01_basic_training/run
    python examples/03_generation_sampling.py --tiny             # a few seconds (what the tests run)

Without ``--model`` it trains a char-level model on Python's bundled docs into ``--out``
(default ``runs/examples/03_generation_sampling``, replaced on a re-run). ``--tiny`` (or
``FOUNDRY_EXAMPLES_TINY=1``) makes that model tiny: its text is gibberish, but every
property above still holds, which is what the tests check.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from llm_foundry import Generator, Trainer
from llm_foundry.config import load_config
from llm_foundry.data import builtin_corpus, prepare_dataset

from _common import example_parser, fresh_dir, parse_example_args

DEFAULT_OUT = "runs/examples/03_generation_sampling"

TINY_OVERRIDES = [
    "model.dim=32", "model.n_layers=2", "model.n_heads=2", "model.max_seq_len=64",
    "train.batch_size=8", "train.max_steps=30", "train.warmup_steps=5", "train.lr=3e-3",
    "train.eval_batches=2", "train.eval_interval=0", "train.log_interval=10", "train.checkpoint_interval=0",
]
FULL_OVERRIDES = [
    "train.time_budget=60", "train.max_steps=100000", "train.eval_interval=0", "train.log_interval=5",
    "train.warmup_steps=20", "train.checkpoint_interval=0",
]
PROMPT = "The for statement"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = example_parser("Greedy, temperature, top-k, top-p, stop strings, seeds and streaming.", DEFAULT_OUT)
    p.add_argument("--model", help="use this model folder instead of training one (e.g. the run of example 01)")
    return parse_example_args(p, argv)



def train_model(out: Path, tiny: bool) -> Path:
    """A small char-level model on the built-in corpus (see example 01 for the details)."""
    prepare_dataset(builtin_corpus(), "char", out / "data", val_fraction=0.05, show_progress=False)
    model_cfg, train_cfg = load_config("tiny", TINY_OVERRIDES if tiny else FULL_OVERRIDES)
    Trainer(model_cfg, train_cfg, out / "data", out / "run").run()
    return out / "run"


def show(label: str, text: str) -> None:
    # One line per result; JSON quoting makes newlines and odd characters visible.
    print(f"{label:<28} {json.dumps(text, ensure_ascii=False)}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.model:
        model_dir = Path(args.model)
    else:
        out = fresh_dir(Path(args.out))
        print(f"mode: {'tiny' if args.tiny else 'full'} | training a model into {out / 'run'}")
        model_dir = train_model(out, args.tiny)

    # 0. Load a model folder (a run folder is one) for generation.
    gen = Generator.from_pretrained(model_dir)
    n = 60
    print(f"model: {model_dir} | prompt: {json.dumps(PROMPT)} | {n} new tokens per sample")

    # 1. Greedy: always the most likely next token; no randomness, so no seed needed.
    greedy_1 = gen.generate(PROMPT, max_new_tokens=n, temperature=0)
    greedy_2 = gen.generate(PROMPT, max_new_tokens=n, temperature=0)
    show("[1] greedy (run 1):", greedy_1)
    show("[1] greedy (run 2):", greedy_2)

    # 2. Temperature divides the logits: <1 sharpens the distribution, >1 flattens it.
    for t in (0.3, 0.8, 1.5):
        text = gen.generate(PROMPT, max_new_tokens=n, temperature=t, seed=0)
        show(f"[2] temperature {t} (seed 0):", text)

    # 3. Filtering before sampling: top-k keeps the k most likely tokens, top-p the smallest
    #    set whose probability reaches p. top_k=1 leaves only the argmax: greedy again.
    show("[3] top_k=10:", gen.generate(PROMPT, max_new_tokens=n, temperature=1.0, top_k=10, seed=0))
    show("[3] top_p=0.9:", gen.generate(PROMPT, max_new_tokens=n, temperature=1.0, top_p=0.9, seed=0))
    top1 = gen.generate(PROMPT, max_new_tokens=n, temperature=1.0, top_k=1, seed=123)
    show("[3] top_k=1:", top1)

    # 4. Stop strings: the text ends just before the first one (which is not returned).
    #    Same seed, so it is the unstopped text cut at the stop string.
    stops = [".", "\n\n"]
    full = gen.generate(PROMPT, max_new_tokens=n, temperature=1.0, seed=7)
    stopped = gen.generate(PROMPT, max_new_tokens=n, temperature=1.0, seed=7, stop=stops)
    show("[4] no stop (seed 7):", full)
    show(f"[4] stop={json.dumps(stops)} (seed 7):", stopped)
    #    A stop string we know occurs: two characters from the middle of the unstopped text.
    mid = full[n // 2:n // 2 + 2]
    stopped_mid = gen.generate(PROMPT, max_new_tokens=n, temperature=1.0, seed=7, stop=[mid])
    show("[4] stop string from mid-text:", mid)
    show("[4] stopped there (seed 7):", stopped_mid)

    # 5. Seeds: the sampler draws from a torch.Generator seeded with `seed`.
    seed_a1 = gen.generate(PROMPT, max_new_tokens=n, temperature=1.0, seed=42)
    seed_a2 = gen.generate(PROMPT, max_new_tokens=n, temperature=1.0, seed=42)
    seed_b = gen.generate(PROMPT, max_new_tokens=n, temperature=1.0, seed=43)
    show("[5] seed 42 (run 1):", seed_a1)
    show("[5] seed 42 (run 2):", seed_a2)
    show("[5] seed 43:", seed_b)

    # 6. Streaming: the same call as generate(), as an iterator of text pieces. A piece is
    #    held back while it could be the start of a stop string or of a multi-byte character.
    print("[6] streaming: " + PROMPT, end="", flush=True)
    pieces = []
    for piece in gen.stream(PROMPT, max_new_tokens=n, temperature=0.8, top_p=0.95, seed=5):
        pieces.append(piece)
        print(piece, end="", flush=True)
    print()
    whole = gen.generate(PROMPT, max_new_tokens=n, temperature=0.8, top_p=0.95, seed=5)
    show("[6] streamed, joined:", "".join(pieces))
    show("[6] generate(), same seed:", whole)
    print(f"[6] {len(pieces)} pieces streamed")
    #    With a stop string, streaming stops at the same place generate() does.
    streamed_mid = "".join(gen.stream(PROMPT, max_new_tokens=n, temperature=1.0, seed=7, stop=[mid]))
    show("[6] streamed, same mid stop:", streamed_mid)

    # The promises above, checked.
    cut = min((full.find(s) for s in stops if s in full), default=len(full))
    checks = {
        "greedy is deterministic": greedy_1 == greedy_2,
        "top_k=1 equals greedy": top1 == greedy_1,
        "stop string cuts the text": (stopped == full[:cut] and not any(s in stopped for s in stops)
                                      and bool(mid) and stopped_mid == full[:full.find(mid)] and len(stopped_mid) < len(full)),
        "same seed, same text": seed_a1 == seed_a2,
        "different seed, different text": seed_a1 != seed_b,
        "stream joined equals generate": "".join(pieces) == whole and streamed_mid == stopped_mid,
    }
    for name, ok in checks.items():
        print(f"check: {name}: {'OK' if ok else 'FAILED'}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
