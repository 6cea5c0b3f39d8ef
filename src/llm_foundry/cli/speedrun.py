"""`foundry speedrun`: tokenizer -> pretrain -> midtrain -> SFT -> RL -> eval -> report in one run folder."""

from __future__ import annotations

import argparse
import sys

from . import add_preset_option, add_run_options, add_text_option, check_tasks, run_option_overrides

# Where --device/--precision/--seed land in a speedrun preset: every stage that runs a model.
RUN_OPTION_PATHS = ("pretrain.", "midtrain.train.", "sft.train.", "rl.")


def add_parser(sub) -> None:
    from ..config.speedrun import SpeedrunConfig, list_speedrun_presets

    p = sub.add_parser("speedrun", help="the whole chat pipeline, resumable per stage",
                       description="Run tokenizer -> pretrain -> midtrain -> SFT -> RL -> eval -> report into one run "
                                   "folder, on the built-in corpus (Python's documentation) or your --text. Running "
                                   "the same command again continues: finished stages are skipped and an interrupted "
                                   "stage resumes from its checkpoint.",
                       epilog="Overrides: key=value by path, e.g. pretrain.time_budget=60 midtrain.train.lr=1e-3 "
                              "rl.steps=10 (or a bare key only one section has, e.g. dim=128). "
                              f"Presets: {', '.join(list_speedrun_presets())}; `foundry config show cpu` prints one.")
    add_preset_option(p, "cpu", dest="preset",
                      help="speedrun preset: cpu (<= 30 min on 2 cores), demo (<= 10 min), or a YAML file (default: cpu)")
    p.add_argument("--out", default=None, metavar="RUN", help="the run folder (default: runs/speedrun-PRESET)")
    add_text_option(p, "your own text files or folders instead of the built-in corpus", nargs="+")
    add_run_options(p, from_config=True, seed_help="seed of every training stage (pretrain.seed, midtrain.train.seed, ...)")
    p.add_argument("--quiet", action="store_true", help="no progress display")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="preset overrides")
    p.set_defaults(func=run, config_root=SpeedrunConfig)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..config.speedrun import check_speedrun_config, load_speedrun_config
    from ..pipelines.speedrun import format_results, run_speedrun
    from ..training.distributed import world_size
    from ..utils.errors import FoundryError, TrainingInterrupted
    from ..utils.progress import console

    if world_size() > 1:  # its tokenizer, eval and RL stages are one process's work
        raise FoundryError("foundry speedrun runs in one process: start it without torchrun "
                           "(train, midtrain and sft run under torchrun)")
    out = args.out or f"runs/speedrun-{Path(args.preset).stem}"
    overrides = [*args.overrides, *run_option_overrides(args, RUN_OPTION_PATHS)]
    cfg = check_speedrun_config(load_speedrun_config(args.preset, overrides))
    check_tasks(cfg.rl.tasks, "rl.tasks")
    check_tasks([*cfg.eval.tasks, *cfg.eval.no_tool_tasks], "eval.tasks")
    try:
        state = run_speedrun(out, args.preset, overrides, args.text, quiet=args.quiet)
    except TrainingInterrupted as e:
        print(f"interrupted: {e}; run the same command again to continue", file=sys.stderr)
        return 130
    console.print(format_results(state))
    console.print(f"total {state.get('total_seconds', 0):.0f}s; report: {Path(out) / 'report.md'}\n"
                  f"Talk to the model: foundry chat {Path(out) / 'rl'}")
    return 0
