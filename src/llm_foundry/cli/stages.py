"""`foundry midtrain`, `foundry sft`, `foundry rl`, `foundry dpo`: the chat stages, each from one model folder
into a new one; `foundry merge-lora`: a LoRA run's adapters merged into a plain model folder."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from ..config.loader import override_dict
from ..config.stages import DPOConfig, RLConfig, StageConfig
from ..utils.errors import FoundryError
from ..utils.progress import console
from . import add_preset_option, add_run_options, check_tasks, run_option_overrides, summary_line

STAGE_HELP = {
    "midtrain": ("teach a pretrained model the chat layout and tool calls (task mixture)",
                 "Continue a model folder on a weighted mixture of synthetic conversations (and plain text with "
                 "--data) into a new model folder. Settings default to the speedrun preset's midtrain section."),
    "sft": ("supervised fine-tuning on conversations with the loss on the assistant's tokens",
            "Fine-tune a chat model folder on conversations, training only the tokens the assistant writes "
            "(masked loss), into a new model folder. Settings default to the speedrun preset's sft section."),
}


def add_parser(sub) -> None:
    for name, (short, desc) in STAGE_HELP.items():
        p = sub.add_parser(name, help=short, description=desc,
                           epilog="Overrides: key=value for the stage (examples_per_task=5000, lang=en) or its "
                                  "training (lr=3e-4, train.batch_size=8). Re-run with --resume after an interruption.")
        p.add_argument("model", metavar="MODEL", help="the model folder to start from (the previous stage)")
        p.add_argument("--out", required=True, metavar="OUT", help="the new model folder to write")
        add_preset_option(p, "cpu", "speedrun preset whose section gives the defaults (default: cpu)", dest="preset")
        p.add_argument("--mix", metavar="SOURCE=W,...",
                       help="task mixture, e.g. arithmetic=4,count_letters=3,text=1,chats.jsonl=2 "
                            "(built-in tasks, 'text' for --data, or .jsonl conversation files)")
        p.add_argument("--data", metavar="DATA_DIR", help="a prepared data folder (made by `foundry prepare`) for the mixture's 'text' source")
        p.add_argument("--loss-on", choices=["all", "assistant"], help="train every token or only the assistant's")
        p.add_argument("--max-steps", type=int, metavar="N", help="optimizer steps (overrides the preset)")
        p.add_argument("--time-budget", type=float, metavar="SECONDS", help="stop after this much training time")
        add_run_options(p, from_config=True, seed_help="seed of the batches and the init of new rows (train.seed)")
        p.add_argument("--resume", action="store_true", help="continue the stage saved in OUT")
        p.add_argument("--quiet", action="store_true", help="no progress bar")
        p.add_argument("overrides", nargs="*", metavar="key=value", help="stage or training overrides")
        p.set_defaults(func=run_chat_stage, stage=name, config_root=StageConfig)

    p = sub.add_parser("rl", help="reinforcement learning (GRPO) with rewards from the task checkers",
                       description="Sample groups of completions per prompt with the engine (tool on), reward them "
                                   "with the task's checker, and push up the better-than-average ones; writes a new "
                                   "model folder. Settings default to the speedrun preset's rl section.",
                       epilog="Overrides: key=value of the rl settings, e.g. temperature=0.8 max_tokens=64 lr=1e-5.")
    p.add_argument("model", metavar="MODEL", help="the chat model folder to start from (usually the SFT model)")
    p.add_argument("--out", required=True, metavar="OUT", help="the new model folder to write")
    add_preset_option(p, "cpu", "speedrun preset whose rl section gives the defaults (default: cpu)", dest="preset")
    p.add_argument("--tasks", metavar="TASK,...", help="built-in tasks to train on (default from the preset: arithmetic)")
    p.add_argument("--split", choices=("stretch", "train"),
                   help="training prompts: stretch (default: longer numbers and words than SFT saw) or train (SFT's own)")
    p.add_argument("--steps", type=int, metavar="N", help="optimizer steps (overrides the preset)")
    p.add_argument("--group-size", type=int, metavar="G", help="completions sampled per prompt")
    p.add_argument("--prompts-per-step", type=int, metavar="P", help="prompts per step")
    p.add_argument("--kl-coef", type=float, metavar="X", help="weight of the KL penalty to the starting model (0 = off)")
    add_run_options(p, from_config=True, seed_help="seed of the prompt draws and the sampling (rl seed)")
    p.add_argument("--resume", action="store_true", help="continue the RL run saved in OUT")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="rl overrides")
    p.add_argument("--reward", metavar="MODULE:FUNCTION",
                   help="your reward function instead of the task checkers: f(prompt, completion) -> float, from a "
                        "module name or a .py file (path/to/rewards.py:score)")
    p.set_defaults(func=run_rl_stage, config_root=RLConfig)

    p = sub.add_parser("dpo", help="direct preference optimisation on chosen/rejected pairs (frozen reference)",
                       description="Push a chat model toward the chosen reply of each pair and away from the rejected "
                                   "one, against the frozen start model (DPO), into a new model folder. Without --data "
                                   "the pairs are built in: correct against incorrect answers of the synthetic tasks.",
                       epilog="Overrides: key=value of the dpo settings or their training, e.g. beta=0.2 "
                              "(or dpo.beta=0.2) train.lr=5e-5 train.lora_rank=8. Re-run with --resume after an "
                              "interruption.")
    p.add_argument("model", metavar="MODEL", help="the chat model folder to start from (also the frozen reference)")
    p.add_argument("--out", required=True, metavar="OUT", help="the new model folder to write")
    p.add_argument("--data", metavar="PAIRS.jsonl",
                   help='pairs, one {"prompt", "chosen", "rejected"} per line (prompt: a string or a messages list); '
                        "default: the built-in pairs")
    p.add_argument("--max-steps", type=int, metavar="N", help="optimizer steps (default 200)")
    add_run_options(p, from_config=True, seed_help="seed of the pair draws and the held-out split (train.seed)")
    p.add_argument("--resume", action="store_true", help="continue the DPO run saved in OUT")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dpo or training overrides")
    p.set_defaults(func=run_dpo_stage, config_root=DPOConfig)

    p = sub.add_parser("merge-lora", help="merge a LoRA run's adapters into a plain model folder",
                       description="Write MODEL with its LoRA adapters (adapter_model.safetensors) merged into the "
                                   "weights as a plain model folder, whose logits equal the adapted model's.")
    p.add_argument("model", metavar="MODEL", help="a model folder with LoRA adapters (made with train.lora_rank=R)")
    p.add_argument("--out", required=True, metavar="MERGED", help="the plain model folder to write (new or empty)")
    p.set_defaults(func=run_merge_lora)


def _preset_section(preset: str, section: str) -> dict:
    from ..config.speedrun import load_speedrun_config

    return dict(load_speedrun_config(preset).get(section) or {})


def _saved(out: str, filename: str) -> dict:
    from ..utils.io import read_json

    path = Path(out) / filename
    if not path.is_file():
        raise FoundryError(f"nothing to resume in {out} (no {filename})")
    return read_json(path, "stage settings")


def stage_settings(args: argparse.Namespace) -> dict:
    """The stage's settings as data: preset section (or the saved ones on --resume), then overrides and flags."""
    from ..training.stages import STAGE_CONFIG_FILE

    if args.resume:
        raw = _saved(args.out, STAGE_CONFIG_FILE)
        raw = {k: v for k, v in raw.items() if k in {f.name for f in dataclasses.fields(StageConfig)} and k != "stage"}
    else:
        raw = _preset_section(args.preset, args.stage)
    raw = override_dict(StageConfig(stage=args.stage), raw, [*args.overrides, *run_option_overrides(args, ["train."])],
                        args.stage)
    raw["train"] = dict(raw.get("train") or {})
    if args.mix is not None:
        raw["mixture"] = args.mix
    if args.loss_on:
        raw["loss_on"] = args.loss_on
    if args.data:
        raw["text_data"] = args.data
    if args.max_steps is not None:
        raw["train"]["max_steps"] = args.max_steps
        if args.time_budget is None:
            raw["train"]["time_budget"] = None  # steps decide
    if args.time_budget is not None:
        raw["train"]["time_budget"] = args.time_budget
        if args.max_steps is None:
            raw["train"]["max_steps"] = 1_000_000_000
    return raw


def run_chat_stage(args: argparse.Namespace) -> int:
    from ..config.stages import parse_mixture, stage_config_from_dict
    from ..data.chat_batches import TEXT_SOURCE
    from ..training.stages import stage_trainer

    raw = stage_settings(args)
    if isinstance(raw.get("mixture"), str):
        raw["mixture"] = parse_mixture(raw["mixture"])
    dropped = not raw.get("text_data") and TEXT_SOURCE in (raw.get("mixture") or {}) and args.mix is None
    if dropped:
        # The preset's mixture mentions plain text, but there is none here: train on the chat part alone.
        raw["mixture"] = {k: v for k, v in raw["mixture"].items() if k != TEXT_SOURCE}
    cfg = stage_config_from_dict(args.stage, raw)
    trainer = stage_trainer(args.model, args.out, cfg, resume=args.resume, quiet=args.quiet)
    if dropped and not args.quiet:
        console.print("note: no --data given, so the mixture's 'text' source is left out")
    summary = trainer.run()
    console.print(summary_line(args.out, summary))
    return 0


def run_rl_stage(args: argparse.Namespace) -> int:
    from ..config.stages import rl_config_from_dict
    from ..training.rl import RL_CONFIG_FILE, run_rl

    if args.resume:
        known = {f.name for f in dataclasses.fields(RLConfig)}
        raw = {k: v for k, v in _saved(args.out, RL_CONFIG_FILE).items() if k in known}
        raw.setdefault("split", "train")  # a run begun before the stretch split trained on train
    else:
        raw = _preset_section(args.preset, "rl")
    raw = override_dict(RLConfig, raw, [*args.overrides, *run_option_overrides(args, [""])], "rl")
    for flag in ("tasks", "split", "steps", "group_size", "prompts_per_step", "kl_coef"):
        if getattr(args, flag) is not None:
            raw[flag] = getattr(args, flag)
    if args.reward is not None:
        raw["reward"] = args.reward
    cfg = rl_config_from_dict(raw)
    check_tasks(cfg.tasks, "rl.tasks")
    summary = run_rl(args.model, args.out, cfg, resume=args.resume, quiet=args.quiet)
    console.print(summary_line(args.out, summary))
    return 0


def dpo_settings(args: argparse.Namespace) -> dict:
    """The DPO settings as data: the defaults (or the saved ones on --resume), then overrides and flags.

    An override may name its section (``dpo.beta=0.2``) or not (``beta=0.2``)."""
    from ..training.dpo import DPO_CONFIG_FILE

    raw = {}
    if args.resume:
        known = {f.name for f in dataclasses.fields(DPOConfig)}
        raw = {k: v for k, v in _saved(args.out, DPO_CONFIG_FILE).items() if k in known}
    overrides = [o[len("dpo."):] if o.startswith("dpo.") else o for o in args.overrides]
    raw = override_dict(DPOConfig, raw, [*overrides, *run_option_overrides(args, ["train."])], "dpo")
    if args.data is not None:
        raw["data"] = args.data
    if args.max_steps is not None:
        raw["train"] = {**(raw.get("train") or {}), "max_steps": args.max_steps}
    return raw


def run_dpo_stage(args: argparse.Namespace) -> int:
    from ..config.stages import dpo_config_from_dict
    from ..training.distributed import world_size
    from ..training.dpo import dpo_trainer

    if world_size() > 1:
        raise FoundryError("foundry dpo runs in one process: start it without torchrun")
    cfg = dpo_config_from_dict(dpo_settings(args))
    if cfg.data is None:
        check_tasks(cfg.task_list(), "dpo.tasks")
    summary = dpo_trainer(args.model, args.out, cfg, resume=args.resume, quiet=args.quiet).run()
    console.print(summary_line(args.out, summary))
    return 0


def run_merge_lora(args: argparse.Namespace) -> int:
    from ..training.lora import merge_lora_folder

    summary = merge_lora_folder(args.model, args.out)
    console.print(summary_line(args.out, summary))
    return 0
