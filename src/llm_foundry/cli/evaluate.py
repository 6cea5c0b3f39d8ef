"""`foundry eval`: loss, perplexity and bits per byte of a model on a text file."""

from __future__ import annotations

import argparse
import json

from . import add_run_options, add_text_option


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a model on a text file", description="Print loss (nats/token), perplexity and bits per byte.")
    p.add_argument("model", metavar="MODEL", help="a model folder (a run folder works)")
    add_text_option(p, "a UTF-8 text file", required=True)
    p.add_argument("--batch-size", type=int, default=8, metavar="B", help="windows per batch (default: 8)")
    add_run_options(p, seed_help="accepted for uniformity; eval is deterministic (it seeds torch all the same)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..config.sampling import check_sampling
    from ..data import read_text_file
    from ..eval import evaluate_text
    from ..models.model_dir import load_model_dir
    from ..utils.device import resolve_device, resolve_dtype
    from ..utils.progress import console

    check_sampling(seed=args.seed, as_flags=True)
    if args.seed is not None:
        torch.manual_seed(args.seed)  # nothing in eval draws random numbers; a seed makes sure of it
    text = read_text_file(args.text)
    device = resolve_device(args.device)
    bundle = load_model_dir(args.model, device)
    m = evaluate_text(bundle.model, bundle.tokenizer, text, batch_size=args.batch_size,
                      amp_dtype=resolve_dtype(args.precision, device, bundle.model.cfg.dim))
    if args.json:
        print(json.dumps(m))
        return 0
    print(f"loss {m['loss']:.4f} nats/token | perplexity {m['perplexity']:.3f} | {m['bits_per_byte']:.4f} bits/byte"
          f" | {m['tokens']:,} tokens, {m['bytes']:,} bytes")
    if m["unknown_chars"]:
        console.print(f"note: {m['unknown_chars']} character(s) were unknown to the tokenizer and scored as <|unk|>")
    return 0
