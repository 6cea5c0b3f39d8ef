"""`foundry train`: train a MiniLLM on a data folder into a run folder."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from ..config import apply_overrides, configs_from_dict, list_presets, load_config, override_sections
from ..config.presets import RunConfig
from ..utils.errors import FoundryError
from ..utils.io import read_json
from ..utils.progress import console
from . import add_preset_option, add_run_options, run_option_overrides, summary_line


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a model on a prepared data folder",
                       description="Train a MiniLLM. The run folder is a model folder holding the latest checkpoint.",
                       epilog="Overrides: key=value, e.g. model.dim=128 train.lr=3e-4 (or just dim=128 lr=3e-4). "
                              f"Presets: {', '.join(list_presets())}.")
    add_preset_option(p, "tiny", "a preset name or a YAML file (default: tiny; `foundry config show NAME` prints one)")
    p.add_argument("--data", required=True, metavar="DATA_DIR", help="a prepared data folder (made by `foundry prepare`)")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="the run folder to write")
    p.add_argument("--time-budget", type=float, metavar="SECONDS",
                   help="stop after this much training time; the schedule is fitted to it")
    p.add_argument("--max-steps", type=int, metavar="N", help="optimizer steps (overrides the preset)")
    p.add_argument("--resume", action="store_true", help="continue the run saved in RUN_DIR exactly")
    p.add_argument("--init-from", metavar="MODEL", help="start from this model folder's weights (fine-tuning); "
                   "prepare the data with `foundry prepare --tokenizer-from MODEL`")
    add_run_options(p, from_config=True, seed_help="seed of the init, the data windows and dropout (train.seed)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    p.set_defaults(func=run, config_root=RunConfig)


def resolve_configs(args: argparse.Namespace):
    """The configs for this run: the preset (or the saved run config on --resume) plus overrides."""
    overrides = [*args.overrides, *run_option_overrides(args, ["train."])]
    if args.max_steps is not None:
        overrides.append(f"train.max_steps={args.max_steps}")
    if args.time_budget is not None:
        overrides.append(f"train.time_budget={args.time_budget}")
        if args.max_steps is None:
            overrides.append("train.max_steps=1000000000")  # time decides
    if args.resume:
        # Re-running the same command with --resume must work, so overrides are applied
        # again; but the model shape is the checkpoint's and may not change.
        run_config = Path(args.out) / "run_config.json"
        if not run_config.is_file():
            from ..training.trainer import nothing_saved_yet

            if nothing_saved_yet(Path(args.out)):  # killed before it saved anything: the run starts over
                return load_config(args.config, overrides)
            raise FoundryError(f"nothing to resume in {args.out} (no run_config.json)")
        saved = read_json(run_config, "run config")
        saved_model, saved_train = configs_from_dict(saved, strict=False)
        model_cfg, train_cfg = apply_overrides(saved_model, saved_train, overrides)
        changed = [f.name for f in dataclasses.fields(model_cfg) if getattr(model_cfg, f.name) != getattr(saved_model, f.name)]
        if changed:
            raise FoundryError(f"the model shape is fixed by the checkpoint; cannot change model.{changed[0]} on --resume")
        return model_cfg, train_cfg
    return load_config(args.config, overrides)


def run(args: argparse.Namespace) -> int:
    from ..training import Trainer

    model_cfg, train_cfg = resolve_configs(args)
    if args.init_from and "model" in override_sections(args.overrides):
        raise FoundryError("the model shape comes from --init-from; model overrides are not allowed with it")
    trainer = Trainer(model_cfg, train_cfg, args.data, args.out, resume=args.resume, init_from=args.init_from, quiet=args.quiet)
    summary = trainer.run()
    console.print(summary_line(args.out, summary))
    return 0
