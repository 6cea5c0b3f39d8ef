"""`foundry evolve`: H2Q-Evo local training, self-evolution, inference and statistics."""

from __future__ import annotations

import argparse
import dataclasses

from ..config.evolve import EvolveOptions, EvolveTrainConfig, TrainOptions, evolve_options, train_options
from . import add_alias, add_preset_option, add_run_options

MODES = ("train", "evolve", "demo", "interactive", "stats")


def add_parser(sub) -> None:
    # Flags default to None ("not given"): a setting comes from its dataclass default, then key=value,
    # then the flag (config/evolve.py); the defaults in the help are read from the dataclasses.
    t, v = TrainOptions, EvolveOptions
    p = sub.add_parser(
        "evolve", help="H2Q-Evo: offline training and self-evolution with an accept/reject gate",
        description="Train a model on local .txt files (--mode train), evolve it in cycles of mutated candidates "
                    "that replace the champion only when they lower the held-out loss (--mode evolve), sample "
                    "from it (--mode demo / interactive) or show the evolution statistics (--mode stats). "
                    "Everything lives in the state folder; interrupted training or evolution continues when "
                    "the same command is run again.",
        epilog="Overrides (key=value): with --mode train, a training option (epochs=3, seed=7, device=cpu) or the "
               "model and training config of a new state (model.dim=128 lr=3e-4; on an existing state only "
               "training fields may change); with --mode evolve, an evolution option (cycles=5 self_tokens=128 "
               "score_samples=4 eval_batches=8). A flag given wins over the same key=value.")
    p.add_argument("--mode", choices=MODES, default="train", help="what to do (default: train)")
    p.add_argument("--state", default="h2q_state", metavar="DIR", help="state folder (default: h2q_state)")
    g = p.add_argument_group("training (--mode train)")
    text = g.add_argument("--text", dest="data_dir", metavar="PATH",
                          help="folder searched recursively for .txt files, or one text file "
                               f"(default: {t.data_dir}; sample data is created there when it holds none)")
    add_alias(g, text, "--data_dir", "--data-dir")  # the source design's spelling
    g.add_argument("--epochs", type=int, metavar="N", help=f"training epochs (default: {t.epochs})")
    add_preset_option(g, None, f"model and training preset of a new state (default: {t.config}: d256, 8 heads, "
                               "6 layers, ctx 512)")
    g.add_argument("--tokenizer", choices=["byte", "char", "bpe"],
                   help=f"tokenizer of a new state (default: {t.tokenizer}, lossless UTF-8)")
    g.add_argument("--vocab-size", type=int, metavar="N", help="BPE vocabulary size (default: 4096)")
    g.add_argument("--val-fraction", type=float, metavar="X",
                   help=f"share held out for validation (decisions), fixed once per state (default: {t.val_fraction})")
    g.add_argument("--test-fraction", type=float, metavar="X",
                   help=f"share held out as test text (never used for a decision; default: {t.test_fraction})")
    g.add_argument("--steps-per-epoch", type=int, metavar="N",
                   help="optimizer steps per epoch (default: one pass over the training split)")
    g.add_argument("--save-every", type=int, metavar="N", help=f"checkpoint every N epochs (default: {t.save_every})")
    g.add_argument("--log-every", type=int, metavar="N",
                   help=f"print the batch loss every N batches (default: {t.log_every})")
    e = p.add_argument_group("evolution (--mode evolve)")
    e.add_argument("--cycles", type=int, metavar="N", help=f"evolution cycles to run (default: {v.cycles})")
    e.add_argument("--population", type=int, metavar="K", help=f"candidates per cycle (default: {v.population})")
    e.add_argument("--cycle-steps", type=int, metavar="N",
                   help=f"budget of each candidate, in optimizer steps at the preset's batch size (default: {v.cycle_steps})")
    e.add_argument("--min-improvement", type=float, metavar="X",
                   help="held-out loss drop (nats/token) a candidate needs to replace the champion "
                        f"(default: {v.min_improvement})")
    e.add_argument("--mine-windows", type=int, metavar="N",
                   help=f"training windows scored per cycle to find hard passages (default: {v.mine_windows})")
    e.add_argument("--hard-keep", type=int, metavar="N", help=f"hardest windows kept per cycle (default: {v.hard_keep})")
    e.add_argument("--self-samples", type=int, metavar="N",
                   help=f"texts the champion generates per cycle for the knowledge base; 0 = none (default: {v.self_samples})")
    e.add_argument("--diversity-weight", type=float, metavar="W",
                   help="weight of (repetition - diversity) of samples in a candidate's score; 0 = pick by "
                        f"held-out loss alone (default: {v.diversity_weight})")
    e.add_argument("--no-early-reject", dest="early_reject", action="store_false", default=None,
                   help="train every candidate to its full budget (default: stop one that is no better at half)")
    i = p.add_argument_group("inference (--mode demo, --mode interactive) and statistics (--mode stats)")
    i.add_argument("--temperature", type=float, default=0.8, metavar="T", help="0 = greedy, at most 2 (default: 0.8)")
    add_alias(i, i.add_argument("--max-new-tokens", dest="max_tokens", type=int, default=100, metavar="N",
                                help="most new tokens per answer (default: 100)"), "--max-tokens")
    i.add_argument("--plot", metavar="FILE.png", help="where --mode stats writes its plot (default: STATE/evolution_stats.png)")
    add_run_options(p, seed_help="seed of a new state (default: the preset's train.seed); "
                                 "with --mode demo, of the samples (default: 0)")
    p.set_defaults(device=None, precision=None)  # not given: key=value, else the options' default (auto)
    p.add_argument("--quiet", action="store_true", default=None, help="print only the summary")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="settings and config overrides (see below)")
    p.set_defaults(func=run, config_root=EvolveTrainConfig)


def run(args: argparse.Namespace) -> int:
    from ..evolve import EvolveInterrupted
    from ..utils.errors import FoundryError

    if args.mode not in ("train", "evolve") and args.overrides:
        raise FoundryError(f"key=value settings apply to --mode train and --mode evolve, not --mode {args.mode}")
    try:
        return {"train": _train, "evolve": _evolve, "demo": _demo, "interactive": _interactive, "stats": _stats}[args.mode](args)
    except EvolveInterrupted as e:
        import sys

        print(f"interrupted: {e}", file=sys.stderr)
        return 130


def _flags(args: argparse.Namespace, cls: type) -> dict:
    """The flags' values of the fields of ``cls`` (None where a flag was not given)."""
    return {f.name: getattr(args, f.name, None) for f in dataclasses.fields(cls) if f.name != "overrides"}


def evolve_train_options(args: argparse.Namespace) -> TrainOptions:
    """The ``--mode train`` options of a parsed command line."""
    opts = train_options(args.overrides, _flags(args, TrainOptions))
    opts.log_every = max(1, opts.log_every)
    return opts


def _train(args: argparse.Namespace) -> int:
    from ..evolve import train

    opts = evolve_train_options(args)
    summary = train(args.state, opts)
    if opts.quiet:
        verdict = (f"-> {summary['champion']}" if summary["champion_replaced"] else
                   f"not lower than the champion's {summary['champion_val_loss']:.4f}; champion kept")
        print(f"trained {summary['epochs']} epoch(s): best eval loss {summary['best_eval_loss']:.4f} {verdict}")
    return 0


def _evolve(args: argparse.Namespace) -> int:
    from ..evolve import Evolution

    stats = Evolution(args.state, evolve_options(args.overrides, _flags(args, EvolveOptions))).run()
    print(f"evolution statistics: total {stats['total_evolutions']}, successful {stats['successful_evolutions']}, "
          f"failed {stats['failed_evolutions']}, average improvement {stats['average_improvement']:.4f}, "
          f"champion held-out loss {stats['champion_val_loss']:.4f}")
    return 0


def _place(args: argparse.Namespace) -> tuple[str, str]:
    """``(device, precision)`` of --mode demo/interactive: the flags, else the options' default."""
    return args.device or EvolveOptions.device, args.precision or EvolveOptions.precision


def _demo(args: argparse.Namespace) -> int:
    from ..evolve.infer import demo, load_generator

    demo(load_generator(args.state, *_place(args)), max_tokens=args.max_tokens,
         temperature=args.temperature, seed=0 if args.seed is None else args.seed)
    return 0


def _interactive(args: argparse.Namespace) -> int:
    from ..evolve.infer import interactive, load_generator

    interactive(load_generator(args.state, *_place(args)), max_tokens=args.max_tokens,
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
