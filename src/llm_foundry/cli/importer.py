"""`foundry import`: a local Hugging Face Llama or Qwen3 folder -> a model folder of ours."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser("import", help="import a Hugging Face Llama or Qwen3 folder as a model folder",
                       description="Convert a local Hugging Face Llama or Qwen3 folder (config.json, safetensors or "
                                   "pytorch_model.bin weights, a byte-level BPE tokenizer.json) into a model folder "
                                   "that trains (--init-from), chats, serves and exports like any other. The model's "
                                   "own end-of-text token becomes <|eos|>; our chat tokens are added as new ids.")
    p.add_argument("hf_dir", metavar="HF_DIR", help="the Hugging Face model folder (local; nothing is downloaded)")
    p.add_argument("--out", required=True, metavar="MODEL", help="the model folder to write")
    p.add_argument("--max-seq-len", type=int, default=None, metavar="N",
                   help="the imported model's context (default: the folder's max_position_embeddings)")
    p.add_argument("--force", action="store_true", help="replace MODEL even if it is not empty")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..export.hf_import import import_hf
    from ..utils.errors import FoundryError

    if args.max_seq_len is not None and args.max_seq_len < 1:
        raise FoundryError(f"--max-seq-len must be at least 1, got {args.max_seq_len}")
    out = import_hf(args.hf_dir, args.out, force=args.force, max_seq_len=args.max_seq_len)
    print(f"imported {args.hf_dir} -> {out} (chat tokens are new: `foundry sft` teaches the chat layout)")
    return 0
