"""`foundry generate`: continue a prompt with a trained model, streaming to the terminal."""

from __future__ import annotations

import argparse
import sys

from . import add_compile_option, add_run_options


def add_parser(sub) -> None:
    p = sub.add_parser("generate", help="sample text from a model", description="Continue a prompt, streaming tokens as they come.")
    p.add_argument("model", metavar="MODEL", help="a model folder (a run folder works)")
    p.add_argument("--prompt", default="", metavar="TEXT", help="text to continue (empty: start from BOS where the tokenizer has one)")
    p.add_argument("--max-new-tokens", type=int, default=200, metavar="N", help="most new tokens per sample (default: 200)")
    p.add_argument("--temperature", type=float, default=0.8, metavar="T", help="0 = greedy, at most 2 (default: 0.8)")
    p.add_argument("--top-k", type=int, metavar="K", help="sample among the K most likely tokens")
    p.add_argument("--top-p", type=float, metavar="P", help="sample from the smallest set with probability >= P")
    p.add_argument("--stop", action="append", default=[], metavar="TEXT", help="stop before this text (repeatable)")
    p.add_argument("--num-samples", type=int, default=1, metavar="N", help="how many samples (default: 1)")
    add_run_options(p, seed_help="seed for reproducible samples (sample i uses N+i)")
    add_compile_option(p)
    p.add_argument("--no-echo", action="store_true", help="print only the continuation, not the prompt")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..config.sampling import MAX_SEED, check_sampling
    from ..inference import Generator
    from ..utils.errors import FoundryError

    check_sampling(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, max_new_tokens=args.max_new_tokens,
                   seed=args.seed, as_flags=True)
    if args.num_samples < 1:
        raise FoundryError("--num-samples must be >= 1")
    gen = Generator.from_pretrained(args.model, device=args.device, precision=args.precision, compile=args.compile)
    for i in range(args.num_samples):
        if args.num_samples > 1:
            print(f"--- sample {i + 1} ---")
        if not args.no_echo:
            sys.stdout.write(args.prompt)
        seed = None if args.seed is None else (args.seed + i) % (MAX_SEED + 1)
        for piece in gen.stream(args.prompt, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                top_k=args.top_k, top_p=args.top_p, stop=args.stop, seed=seed):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
    return 0
