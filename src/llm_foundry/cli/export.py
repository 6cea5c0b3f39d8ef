"""`foundry export`: write a model folder in a format other tools load (transformers, llama.cpp, ollama)."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    from ..export import FORMATS

    p = sub.add_parser("export", help="export a model for other tools (transformers, llama.cpp, ollama)",
                       description="Write a model folder in another format. hf: a folder that transformers' "
                                   "AutoModelForCausalLM and AutoTokenizer load, offline, with a chat template of "
                                   "our chat layout. gguf: one file for llama.cpp and ollama.")
    p.add_argument("model", metavar="MODEL", help="a model folder (a run folder works)")
    # Checked in run(), not by argparse `choices`, so a bad value is a one-line error like every other.
    p.add_argument("--format", default="hf", metavar="{" + ",".join(FORMATS) + "}",
                   help="hf: Hugging Face transformers (Llama, or Qwen3 for qk_norm models); "
                        "gguf: llama.cpp and ollama (needs the gguf package) (default: hf)")
    p.add_argument("--quant", default=None, metavar="{f16,q8_0}",
                   help="gguf only: f16 (default) or q8_0 (8-bit blocks, about half the size)")
    p.add_argument("--out", required=True, metavar="PATH", help="the folder (hf) or file (gguf, e.g. model.gguf) to write")
    p.add_argument("--force", action="store_true", help="write into a non-empty folder / replace the file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..export import FORMATS
    from ..utils.errors import FoundryError

    if args.format not in FORMATS:
        raise FoundryError(f"unknown export format {args.format!r} (use {', '.join(FORMATS)})")
    if args.format == "gguf":
        from ..export.gguf import export_gguf

        out = export_gguf(args.model, args.out, quant=args.quant or "f16", force=args.force)
        print(f"exported {args.model} -> {out} (GGUF {args.quant or 'f16'}; run with llama.cpp or ollama)")
        return 0
    if args.quant is not None:
        raise FoundryError("--quant applies to --format gguf only")
    from ..export import export_hf

    out = export_hf(args.model, args.out, force=args.force)
    print(f"exported {args.model} -> {out} (Hugging Face; load with AutoModelForCausalLM.from_pretrained)")
    return 0
