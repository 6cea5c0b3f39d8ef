"""`foundry online`: the REPL of a model that learns from every line you type."""

from __future__ import annotations

import argparse

from ..config.online import OnlineConfig, split_settings
from ..utils.paths import default_state_dir
from . import add_preset_option, add_run_options


def add_parser(sub) -> None:
    p = sub.add_parser(
        "online", help="a model that learns from every line you type (REPL)",
        description="Start (or continue) an online learner: every line you type is stored for good and trained "
                    "on at once; /help lists the commands. The state folder keeps the model, optimizer, EMA, "
                    "vocabulary, settings and every input, and is saved on /save, /quit, end of input, "
                    "Ctrl-C and SIGTERM.",
        epilog="Overrides: key=value for the online settings (e.g. steps=5 temperature=0.5 typed_ratio=0.3 "
               "max_vocab=4096; saved), "
               "a new state's model (e.g. model.dim=128) or the training (e.g. lr=5e-4, ema_decay=0.995). Online "
               "defaults on top of the preset: batch_size=4, schedule=constant, warmup_steps=20, ema_decay=0.99.")
    p.add_argument("--state", default=str(default_state_dir()), metavar="DIR",
                   help="state folder (default: $XDG_DATA_HOME/llm-foundry/online, "
                        "i.e. ~/.local/share/llm-foundry/online)")
    add_preset_option(p, "tinygpt", dest="preset",
                      help="model for a new state (default: tinygpt: d256, 8 heads, 4 layers, ctx 256)")
    p.add_argument("--steps", type=int, metavar="N", help="training steps per typed line (default: 20; saved)")
    p.add_argument("--file-steps", type=float, metavar="X",
                   help="steps per line for /load_txt and /train (default: as --steps; 0.25 = one step every 4 "
                        "lines; saved)")
    p.add_argument("--sample-lines", action="store_true", help="print a short sample after each typed line")
    p.add_argument("--repair", action="store_true",
                   help="rewrite the state's replay store without its damaged records (atomically), report the "
                        "counts and exit")
    add_run_options(p, seed_help="seed of a new state: its init and replay draws (train.seed)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    p.set_defaults(func=run, config_root=OnlineConfig)


def run(args: argparse.Namespace) -> int:
    from ..online.learner import OnlineLearner
    from ..online.repl import run_repl
    from ..utils.errors import FoundryError

    from pathlib import Path

    if Path(args.state).exists() and not Path(args.state).is_dir():
        raise FoundryError(f"--state {args.state} is a file, not a folder; give a folder (a new one is created)")
    if args.repair:
        from ..online.state import repair

        counts = repair(Path(args.state))
        print(f"repaired {args.state}: kept {counts['kept']} records ({counts['typed']} typed), "
              f"dropped {counts['dropped']} damaged" if counts["dropped"] else
              f"{args.state}: no damaged records ({counts['kept']} records); nothing to repair")
        return 0
    settings, overrides = split_settings(args.overrides)
    if args.steps is not None:
        settings["steps"] = args.steps
    if args.file_steps is not None:
        if not args.file_steps > 0:
            raise FoundryError("--file-steps must be positive")
        settings["file_steps"] = args.file_steps
    if args.seed is not None:
        overrides.append(f"train.seed={args.seed}")
    learner = OnlineLearner.open(args.state, preset=args.preset, overrides=overrides, settings=settings,
                                 device=args.device, precision=args.precision)
    return run_repl(learner, sample_lines=args.sample_lines)
