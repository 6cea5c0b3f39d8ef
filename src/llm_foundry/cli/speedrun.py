"""`foundry speedrun`: tokenizer -> pretrain -> midtrain -> SFT -> RL -> eval -> report in one run folder."""

from __future__ import annotations

import argparse
import sys


def add_parser(sub) -> None:
    from ..pipelines.speedrun import list_speedrun_presets

    p = sub.add_parser("speedrun", help="the whole chat pipeline, resumable per stage",
                       description="Run tokenizer -> pretrain -> midtrain -> SFT -> RL -> eval -> report into one run "
                                   "folder, on the built-in corpus (Python's documentation) or your --data. Running "
                                   "the same command again continues: finished stages are skipped and an interrupted "
                                   "stage resumes from its checkpoint.",
                       epilog="Overrides: SECTION.key=value, e.g. pretrain.time_budget=60 midtrain.train.lr=1e-3 "
                              f"rl.steps=10 model.dim=128. Presets: {', '.join(list_speedrun_presets())}.")
    p.add_argument("--preset", default="cpu", metavar="NAME|FILE.yaml",
                   help="speedrun preset: cpu (<= 30 min on 2 cores), demo (<= 10 min), or a YAML file (default: cpu)")
    p.add_argument("--out", default=None, metavar="RUN", help="the run folder (default: runs/speedrun-PRESET)")
    p.add_argument("--data", nargs="+", metavar="INPUT", help="your own text files or folders instead of the built-in corpus")
    p.add_argument("--quiet", action="store_true", help="no progress display")
    p.add_argument("overrides", nargs="*", metavar="SECTION.key=value", help="preset overrides")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..pipelines.speedrun import format_results, run_speedrun
    from ..utils.errors import TrainingInterrupted
    from ..utils.progress import console

    out = args.out or f"runs/speedrun-{Path(args.preset).stem}"
    try:
        state = run_speedrun(out, args.preset, args.overrides, args.data, quiet=args.quiet)
    except TrainingInterrupted as e:
        print(f"interrupted: {e}; run the same command again to continue", file=sys.stderr)
        return 130
    console.print(format_results(state))
    console.print(f"total {state.get('total_seconds', 0):.0f}s; report: {Path(out) / 'report.md'}\n"
                  f"Talk to the model: foundry chat {Path(out) / 'rl'}")
    return 0
