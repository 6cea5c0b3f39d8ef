"""`foundry prepare`: text files, folders or .jsonl -> a token data folder."""

from __future__ import annotations

import argparse

from ..utils.progress import console


def add_parser(sub) -> None:
    p = sub.add_parser("prepare", help="tokenize text into memory-mapped shards",
                       description="Tokenize files, folders (recursively) and .jsonl files (a \"text\" field per line) "
                                   "into a data folder of token shards with a train/val split.")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="text files, folders, or .jsonl files")
    p.add_argument("--tokenizer", choices=["char", "byte", "bpe"], default="char",
                   help="char: one id per character (grows); byte: UTF-8 bytes; bpe: trained byte-level BPE (default: char)")
    p.add_argument("--tokenizer-from", metavar="MODEL",
                   help="reuse the tokenizer of this model or data folder (for fine-tuning with --init-from)")
    p.add_argument("--vocab-size", type=int, default=4096, metavar="N", help="BPE vocabulary size (default: 4096)")
    p.add_argument("--val-fraction", type=float, default=0.1, metavar="X",
                   help="share held out for validation; by document, or the tail of a single file (default: 0.1)")
    p.add_argument("--tokenizer-sample-bytes", type=int, metavar="N",
                   help="BPE learns its merges from about N bytes of the training text, spread evenly over it; "
                        "0 for all of it (default: 1000000)")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the document split (default: 0)")
    p.add_argument("--out", required=True, metavar="DATA_DIR", help="the data folder to write")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..data import Corpus, prepare_dataset
    from ..tokenizers import load_tokenizer

    corpus = Corpus.from_inputs(args.inputs)  # streamed: read from disk as it is tokenized
    tokenizer = load_tokenizer(args.tokenizer_from) if args.tokenizer_from else args.tokenizer
    sample = {} if args.tokenizer_sample_bytes is None else {"tokenizer_sample_bytes": args.tokenizer_sample_bytes}
    meta = prepare_dataset(corpus, tokenizer, args.out, vocab_size=args.vocab_size, val_fraction=args.val_fraction,
                           seed=args.seed, **sample)
    s = meta["splits"]
    parts = [f"{name}: {info['tokens']:,} tokens in {info['documents']} document(s)" for name, info in s.items()]
    console.print(f"prepared {args.out} ({meta['tokenizer']} tokenizer, vocab {meta['vocab_size']}): " + "; ".join(parts))
    return 0
