"""`foundry export`: write a model folder in a format other tools load (Hugging Face transformers)."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    from ..export import FORMATS

    p = sub.add_parser("export", help="export a model for other tools (Hugging Face transformers)",
                       description="Write a model folder in another format. hf: a folder that transformers' "
                                   "AutoModelForCausalLM and AutoTokenizer load, offline.")
    p.add_argument("model", metavar="MODEL", help="a model folder (a run folder works)")
    # Checked in run(), not by argparse `choices`, so a bad value is a one-line error like every other.
    p.add_argument("--format", default="hf", metavar="{" + ",".join(FORMATS) + "}",
                   help="hf: Hugging Face transformers (Llama, or Qwen3 for qk_norm models); the only format so far (default: hf)")
    p.add_argument("--out", required=True, metavar="DIR", help="the folder to write")
    p.add_argument("--force", action="store_true", help="write into DIR even if it is not empty")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..export import FORMATS, export_hf
    from ..utils.errors import FoundryError

    if args.format not in FORMATS:
        raise FoundryError(f"unknown export format {args.format!r} (use {', '.join(FORMATS)})")
    out = export_hf(args.model, args.out, force=args.force)
    print(f"exported {args.model} -> {out} (Hugging Face; load with AutoModelForCausalLM.from_pretrained)")
    return 0
