"""Example 04: fine-tuning: continue training a base model on a new kind of text.

What it shows:
  1. train a *base* model on one corpus (Python's reference docs, English prose);
  2. prepare a second corpus (the Python source code of some standard-library modules)
     with the *base model's own tokenizer*, so the ids mean the same thing;
  3. start a new run from the base model's weights: ``Trainer(..., init_from=BASE_DIR)``
     (the CLI equivalent is ``foundry prepare --tokenizer-from BASE`` then
     ``foundry train --init-from BASE``);
  4. the loss on held-out source code before and after fine-tuning, the loss on the old
     prose (what fine-tuning costs there), and a model trained from scratch on the same
     code for the same number of steps, for comparison.

Run it from the repository root:

    python examples/04_fine_tuning.py             # ~2 minutes
    python examples/04_fine_tuning.py --tiny      # a few seconds (what the tests run)

``--tiny`` (or ``FOUNDRY_EXAMPLES_TINY=1``) shrinks models and runs. Output goes to ``--out``
(default ``runs/examples/04_fine_tuning``), replaced on a re-run; it holds ``base/``,
``finetuned/`` and ``scratch/`` model folders.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import sys
from pathlib import Path

from llm_foundry import Trainer
from llm_foundry.config import load_config
from llm_foundry.data import Document, builtin_corpus, prepare_dataset
from llm_foundry.eval import evaluate_text
from llm_foundry.tokenizers import load_tokenizer
from llm_foundry.models import load_model_dir

from _common import example_parser, fresh_dir, parse_example_args

DEFAULT_OUT = "runs/examples/04_fine_tuning"

# The model shape (used for the base and the from-scratch model; the fine-tuned model
# takes its shape from the base model folder).
TINY_MODEL = ["model.dim=32", "model.n_layers=2", "model.n_heads=2", "model.max_seq_len=64"]
TINY_TRAIN = ["train.batch_size=8", "train.warmup_steps=5", "train.eval_batches=2", "train.eval_interval=0",
              "train.log_interval=10", "train.checkpoint_interval=0"]
FULL_TRAIN = ["train.eval_interval=0", "train.log_interval=5", "train.warmup_steps=10", "train.checkpoint_interval=0"]

# Standard-library modules whose source is the "new text" (pure Python, mostly ASCII).
TRAIN_MODULES = ["textwrap", "string", "colorsys", "bisect", "heapq", "fnmatch", "glob", "queue", "sched",
                 "graphlib", "keyword", "reprlib", "abc", "operator", "statistics", "fractions"]
HELD_OUT_MODULES = ["pprint", "calendar"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = example_parser("Train a base model, then fine-tune it on different text.", DEFAULT_OUT)
    return parse_example_args(p, argv)



def module_sources(names: list[str]) -> list[Document]:
    """Source code of stdlib modules, one document each (docstrings if the source is missing)."""
    docs = []
    for name in names:
        module = importlib.import_module(name)
        try:
            text = inspect.getsource(module)
        except (OSError, TypeError):  # a Python installed without its .py files
            text = module.__doc__ or ""
        if text.strip():
            docs.append(Document(text, f"stdlib:{name}"))
    return docs


def configs(tiny: bool, lr: float, steps: int, seconds: float | None = None):
    """The `tiny` preset for ``steps`` optimizer steps (full mode: or ``seconds`` of training)."""
    if tiny:
        return load_config("tiny", TINY_MODEL + TINY_TRAIN + [f"train.lr={lr}", f"train.max_steps={steps}"])
    budget = [f"train.time_budget={seconds}", "train.max_steps=100000"] if seconds else [f"train.max_steps={steps}"]
    return load_config("tiny", FULL_TRAIN + budget + [f"train.lr={lr}"])


def score(model_dir: Path, texts: dict[str, str]) -> dict[str, float]:
    """Loss (nats/token) of a model folder on each text."""
    bundle = load_model_dir(model_dir)
    return {name: evaluate_text(bundle.model, bundle.tokenizer, text, batch_size=32)["loss"]
            for name, text in texts.items()}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = fresh_dir(Path(args.out))
    print(f"mode: {'tiny' if args.tiny else 'full'} | output: {out}")

    # 1. The base corpus: Python's reference docs. Every 10th topic is kept aside to
    #    measure, at the end, how much of the old text the fine-tuned model still knows.
    prose = builtin_corpus()
    prose_eval = "\n".join(d.text for d in prose[::10])
    prose_train = [d for i, d in enumerate(prose) if i % 10]
    prepare_dataset(prose_train, "char", out / "base_data", val_fraction=0.1, show_progress=False)
    print(f"[1] base corpus: {len(prose_train)} topics of Python's reference docs; {len(prose) - len(prose_train)} "
          f"held out ({len(prose_eval):,} chars)")

    # 2. Train the base model (full mode: for a minute, however many steps that is).
    base_lr = 3e-3 if args.tiny else 2e-3
    model_cfg, train_cfg = configs(args.tiny, lr=base_lr, steps=40, seconds=60)
    base = Trainer(model_cfg, train_cfg, out / "base_data", out / "base").run()
    print(f"[2] base model: {base['step']} steps on prose, val loss {base['val_loss']:.4f}")

    # 3. The new text: Python source code, a different distribution (indentation, symbols,
    #    identifiers). Two modules are held out to measure the effect of fine-tuning.
    code_train = module_sources(TRAIN_MODULES)
    code_eval = "\n".join(d.text for d in module_sources(HELD_OUT_MODULES))
    print(f"[3] new text: {len(code_train)} modules of source code ({sum(len(d.text) for d in code_train):,} chars), "
          f"held out: {', '.join(HELD_OUT_MODULES)} ({len(code_eval):,} chars)")

    # 4. Tokenize the new text with the base model's tokenizer (a model only understands
    #    the ids it was trained on). A char tokenizer does not grow here: characters the
    #    base never saw become <|unk|>.
    base_tok = load_tokenizer(out / "base")
    unk = base_tok.token_id("<|unk|>")
    n_unknown = sum(base_tok.encode(d.text).count(unk) for d in code_train)
    prepare_dataset(code_train, base_tok, out / "code_data", val_fraction=0.1, show_progress=False)
    print(f"[4] prepared {out / 'code_data'} with the base tokenizer (vocab {base_tok.vocab_size}); "
          f"{n_unknown} characters unknown to it")

    texts = {"code (new)": code_eval, "prose (old)": prose_eval}
    if args.tiny:  # score a slice only, to stay within seconds
        texts = {name: text[:6000] for name, text in texts.items()}
    before = score(out / "base", texts)

    # 5. Fine-tune: a new run that starts from the base weights. Its model shape comes from
    #    the base folder (model_cfg is ignored); a lower learning rate keeps more of the base.
    #    A fixed number of steps (not seconds), so that step 6 can compare like with like.
    ft_steps = 30 if args.tiny else 60
    _, ft_cfg = configs(args.tiny, lr=2e-3 if args.tiny else 1e-3, steps=ft_steps)
    ft = Trainer(model_cfg, ft_cfg, out / "code_data", out / "finetuned", init_from=out / "base").run()
    after = score(out / "finetuned", texts)
    print(f"[5] fine-tuned {ft['step']} steps from {out / 'base'}, val loss on code {ft['val_loss']:.4f}")

    # 6. For comparison: the same model shape trained from scratch on the code, for the
    #    same number of steps (at the base model's learning rate).
    scratch_cfg, scratch_train = configs(args.tiny, lr=base_lr, steps=ft_steps)
    sc = Trainer(scratch_cfg, scratch_train, out / "code_data", out / "scratch").run()
    print(f"[6] from scratch: {sc['step']} steps on code, val loss {sc['val_loss']:.4f}")
    scratch = score(out / "scratch", texts)

    # 7. The result: held-out loss in nats per character (lower is better).
    print(f"[7] held-out loss (nats/char); fine-tuned and scratch both trained {ft_steps} steps on code:")
    print(f"    {'':<14}{'base':>10}{'fine-tuned':>12}{'scratch':>10}")
    for name in texts:
        print(f"    {name:<14}{before[name]:>10.4f}{after[name]:>12.4f}{scratch[name]:>10.4f}")
    print(f"loss on new text before: {before['code (new)']:.4f}")
    print(f"loss on new text after: {after['code (new)']:.4f}")
    improved = after["code (new)"] < before["code (new)"]
    print(f"fine-tuning lowered the loss on the new text: {'yes' if improved else 'NO'}")
    return 0 if improved else 1


if __name__ == "__main__":
    sys.exit(main())
