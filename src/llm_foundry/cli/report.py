"""`foundry report RUN`: write report.md (settings, times, curves, eval tables, samples) for a run folder."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="write report.md with plots for a speedrun (or any run folder)",
                       description="Collect the environment, each stage's settings, time and final metrics, loss and "
                                   "reward curves (PNG), eval tables and sample conversations into RUN/report.md.")
    p.add_argument("run", metavar="RUN", help="a speedrun folder, a folder of stage model folders, or one run folder (foundry train, midtrain, sft, rl)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..eval.report import write_report
    from ..utils.progress import console

    path = write_report(args.run)
    console.print(f"wrote {path}")
    return 0
