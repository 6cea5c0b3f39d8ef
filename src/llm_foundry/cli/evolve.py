"""`foundry evolve`: H2Q-Evo local training, self-evolution, inference and statistics."""

from __future__ import annotations

import argparse

from ..config.evolve import EvolveOptions, TrainOptions
from ..config.loader import build
from ..config.presets import RunConfig
from . import add_alias, add_preset_option, add_run_options

MODES = ("train", "evolve", "demo", "interactive", "stats")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "evolve", help="H2Q-Evo: offline training and self-evolution with an accept/reject gate",
        description="Train a model on local .txt files (--mode train), evolve it in cycles of mutated candidates "
                    "that replace the champion only when they lower the held-out loss (--mode evolve), sample "
                    "from it (--mode demo / interactive) or show the evolution statistics (--mode stats). "
                    "Everything lives in the state folder; interrupted training or evolution continues when "
                    "the same command is run again.",
        epilog="Overrides (key=value) set the model and training config of a new state folder, e.g. "
               "model.dim=128 lr=3e-4; on an existing state only training fields may change.")
    p.add_argument("--mode", choices=MODES, default="train", help="what to do (default: train)")
    p.add_argument("--state", default="h2q_state", metavar="DIR", help="state folder (default: h2q_state)")
    g = p.add_argument_group("training (--mode train)")
    text = g.add_argument("--text", dest="data_dir", default="data/training_data", metavar="PATH",
                          help="folder searched recursively for .txt files, or one text file "
                               "(default: data/training_data; sample data is created there when it holds none)")
    add_alias(g, text, "--data_dir", "--data-dir")  # the source design's spelling
    g.add_argument("--epochs", type=int, default=10, metavar="N", help="training epochs (default: 10)")
    add_preset_option(g, "h2q", "model and training preset of a new state (default: h2q: d256, 8 heads, 6 layers, ctx 512)")
    g.add_argument("--tokenizer", choices=["byte", "char", "bpe"], default="byte",
                   help="tokenizer of a new state (default: byte, lossless UTF-8)")
    g.add_argument("--vocab-size", type=int, metavar="N", help="BPE vocabulary size (default: 4096)")
    g.add_argument("--val-fraction", type=float, default=0.05, metavar="X",
                   help="share held out for validation (decisions), fixed once per state (default: 0.05)")
    g.add_argument("--test-fraction", type=float, default=0.05, metavar="X",
                   help="share held out as test text (never used for a decision; default: 0.05)")
    g.add_argument("--steps-per-epoch", type=int, metavar="N",
                   help="optimizer steps per epoch (default: one pass over the training split)")
    g.add_argument("--save-every", type=int, default=1, metavar="N", help="checkpoint every N epochs (default: 1)")
    g.add_argument("--log-every", type=int, default=50, metavar="N", help="print the batch loss every N batches (default: 50)")
    e = p.add_argument_group("evolution (--mode evolve)")
    e.add_argument("--cycles", type=int, default=3, metavar="N", help="evolution cycles to run (default: 3)")
    e.add_argument("--population", type=int, default=3, metavar="K", help="candidates per cycle (default: 3)")
    e.add_argument("--cycle-steps", type=int, default=50, metavar="N",
                   help="budget of each candidate, in optimizer steps at the preset's batch size (default: 50)")
    e.add_argument("--min-improvement", type=float, default=0.001, metavar="X",
                   help="held-out loss drop (nats/token) a candidate needs to replace the champion (default: 0.001)")
    e.add_argument("--mine-windows", type=int, default=256, metavar="N",
                   help="training windows scored per cycle to find hard passages (default: 256)")
    e.add_argument("--hard-keep", type=int, default=64, metavar="N", help="hardest windows kept per cycle (default: 64)")
    e.add_argument("--self-samples", type=int, default=4, metavar="N",
                   help="texts the champion generates per cycle for the knowledge base; 0 = none (default: 4)")
    e.add_argument("--diversity-weight", type=float, default=0.05, metavar="W",
                   help="weight of (repetition - diversity) of samples in a candidate's score; 0 = pick by "
                        "held-out loss alone (default: 0.05)")
    e.add_argument("--no-early-reject", action="store_true",
                   help="train every candidate to its full budget (default: stop one that is no better at half)")
    i = p.add_argument_group("inference (--mode demo, --mode interactive) and statistics (--mode stats)")
    i.add_argument("--temperature", type=float, default=0.8, metavar="T", help="sampling temperature (default: 0.8)")
    add_alias(i, i.add_argument("--max-new-tokens", dest="max_tokens", type=int, default=100, metavar="N",
                                help="tokens per answer (default: 100)"), "--max-tokens")
    i.add_argument("--plot", metavar="FILE.png", help="where --mode stats writes its plot (default: STATE/evolution_stats.png)")
    add_run_options(p, seed_help="seed of a new state (default: the preset's train.seed)")
    p.add_argument("--quiet", action="store_true", help="print only the summary")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (see above)")
    p.set_defaults(func=run, config_root=RunConfig)


def run(args: argparse.Namespace) -> int:
    from ..evolve import EvolveInterrupted
    from ..utils.errors import FoundryError

    if args.mode != "train" and args.overrides:
        raise FoundryError(f"config overrides apply to --mode train only, not --mode {args.mode}")
    try:
        return {"train": _train, "evolve": _evolve, "demo": _demo, "interactive": _interactive, "stats": _stats}[args.mode](args)
    except EvolveInterrupted as e:
        import sys

        print(f"interrupted: {e}", file=sys.stderr)
        return 130


def _train(args: argparse.Namespace) -> int:
    from ..evolve import train

    opts = build(TrainOptions, {"data_dir": args.data_dir, "epochs": args.epochs, "config": args.config,
                                "overrides": list(args.overrides), "tokenizer": args.tokenizer,
                                "vocab_size": args.vocab_size, "val_fraction": args.val_fraction,
                                "test_fraction": args.test_fraction, "steps_per_epoch": args.steps_per_epoch,
                                "save_every": args.save_every, "log_every": max(1, args.log_every), "seed": args.seed,
                                "device": args.device, "precision": args.precision, "quiet": args.quiet}, "evolve")
    summary = train(args.state, opts)
    if args.quiet:
        print(f"trained {summary['epochs']} epoch(s): best eval loss {summary['best_eval_loss']:.4f} -> {summary['champion']}")
    return 0


def _evolve(args: argparse.Namespace) -> int:
    from ..evolve import Evolution

    opts = build(EvolveOptions, {"cycles": args.cycles, "population": args.population, "cycle_steps": args.cycle_steps,
                                 "min_improvement": args.min_improvement, "mine_windows": args.mine_windows,
                                 "hard_keep": args.hard_keep, "self_samples": args.self_samples,
                                 "early_reject": not args.no_early_reject, "diversity_weight": args.diversity_weight,
                                 "device": args.device, "precision": args.precision, "quiet": args.quiet}, "evolve")
    stats = Evolution(args.state, opts).run()
    print(f"evolution statistics: total {stats['total_evolutions']}, successful {stats['successful_evolutions']}, "
          f"failed {stats['failed_evolutions']}, average improvement {stats['average_improvement']:.4f}, "
          f"champion held-out loss {stats['champion_val_loss']:.4f}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from ..evolve.infer import demo, load_generator

    demo(load_generator(args.state, args.device, args.precision), max_tokens=args.max_tokens,
         temperature=args.temperature)
    return 0


def _interactive(args: argparse.Namespace) -> int:
    from ..evolve.infer import interactive, load_generator

    interactive(load_generator(args.state, args.device, args.precision), max_tokens=args.max_tokens,
                temperature=args.temperature)
    return 0


def _stats(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..evolve import StatePaths, load_stats, plot_stats, print_stats
    from ..utils.errors import FoundryError
    from ..utils.progress import console

    paths = StatePaths(args.state)
    if not paths.stats.is_file():
        raise FoundryError(f"no evolution statistics in {paths.root}; run `foundry evolve --mode evolve` first")
    stats = load_stats(paths.stats)
    from rich.console import Console

    out = Console()
    if not out.is_terminal:
        out = Console(width=150)  # a file or pipe: do not squeeze the table to 80 columns
    print_stats(stats, out)
    png = plot_stats(stats, Path(args.plot) if args.plot else paths.plot)
    if png:
        console.print(f"plot: {png}")
    return 0
