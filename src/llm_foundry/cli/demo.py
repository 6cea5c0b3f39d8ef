"""`foundry demo`: the whole core path on a built-in corpus, in a few minutes.

prepare (char tokenizer) -> train (tiny preset, time budget) -> sample -> eval.
The corpus is Python's own reference documentation, which every Python carries,
so the demo needs no download and no data of yours.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from ..config.presets import RunConfig
from . import add_preset_option, add_run_options, add_text_option, run_option_overrides

MARKER = ".foundry-demo"
PROMPTS = ("When a function is called,", "Exceptions are")


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="prepare, train, sample and evaluate on a built-in corpus",
                       description="Run the main job end to end on Python's bundled documentation (or --text).")
    p.add_argument("--out", default="runs/demo", help="folder for data and run (default: runs/demo; replaced on re-run)")
    add_text_option(p, "your own text files or folders instead of the built-in corpus", nargs="*")
    p.add_argument("--time-budget", type=float, default=150.0, metavar="SECONDS", help="training time (default: 150)")
    add_preset_option(p, "tiny", "model and training preset (default: tiny)")
    add_run_options(p, from_config=True, seed_help="seed of the training run (train.seed)")
    p.set_defaults(func=run, config_root=RunConfig)


def run(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..data import builtin_corpus, prepare_dataset, read_documents, split_documents
    from ..eval import evaluate_text
    from ..inference import Generator
    from ..training import Trainer
    from ..utils.errors import FoundryError
    from ..utils.io import atomic_write_text
    from ..utils.progress import console

    out = Path(args.out)
    if out.exists():
        if not (out / MARKER).exists():
            raise FoundryError(f"{out} exists and was not made by `foundry demo`; choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / MARKER).touch()

    console.rule("[bold]1/4 prepare")
    docs = read_documents(args.text) if args.text else builtin_corpus()
    meta = prepare_dataset(docs, "char", out / "data", val_fraction=0.1)
    _, val_docs = split_documents(docs, 0.1, seed=0)
    val_file = out / "val.txt"
    atomic_write_text(val_file, "\n".join(d.text for d in val_docs))
    console.print(f"{len(docs)} documents, vocab {meta['vocab_size']}, "
                  + ", ".join(f"{k} {v['tokens']:,} tokens" for k, v in meta["splits"].items()))

    console.rule(f"[bold]2/4 train ({args.config} preset, {args.time_budget:.0f} s)")
    model_cfg, train_cfg = load_config(args.config, [f"train.time_budget={args.time_budget}", "train.max_steps=1000000000",
                                                     *run_option_overrides(args, ["train."])])
    summary = Trainer(model_cfg, train_cfg, out / "data", out / "run").run()
    console.print(f"{summary['step']} steps, {summary['tokens_seen']:,} tokens, {summary['tok_per_s']:,.0f} tokens/s")

    console.rule("[bold]3/4 sample")
    gen = Generator.from_pretrained(out / "run", device=train_cfg.device, precision=train_cfg.precision)
    for prompt in PROMPTS:
        console.print(f"[bold cyan]{prompt}[/]", end="")
        console.print(gen.generate(prompt, max_new_tokens=200, temperature=0.8, top_p=0.95, seed=0), markup=False, highlight=False)
        console.print()

    console.rule("[bold]4/4 eval")
    m = evaluate_text(gen.model, gen.tokenizer, val_file.read_text(encoding="utf-8"))
    console.print(f"held-out: loss {m['loss']:.4f} nats/char | perplexity {m['perplexity']:.2f} | {m['bits_per_byte']:.3f} bits/byte")
    console.print(f"\nYour model is in {out / 'run'}. Try:\n"
                  f"  foundry generate {out / 'run'} --prompt \"The\" --temperature 0.7\n"
                  f"  foundry eval {out / 'run'} --text {val_file}")
    return 0
