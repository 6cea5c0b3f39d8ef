"""Example 05: the three tokenizers: byte, char and BPE.

What it shows:
  1. ``ByteTokenizer``: UTF-8 bytes (ids 0-255) plus special tokens; no training, nothing
     is ever unknown, but a Chinese character costs 3 ids and an emoji 4;
  2. ``CharTokenizer``: one id per character, a vocabulary that grows on demand; ids never
     change once given; a character it has not seen becomes ``<|unk|>`` unless you let it grow;
  3. ``BPETokenizer``: byte-level BPE trained on the built-in corpus (Hugging Face
     ``tokenizers``): frequent words become single tokens;
  4. round-trips (decode(encode(text)) == text) on English, Chinese and emoji;
  5. token counts side by side;
  6. save to ``tokenizer.json`` and load back with ``load_tokenizer``: same ids.

Run it from the repository root:

    python examples/05_tokenizers.py
    python examples/05_tokenizers.py --tiny     # smaller BPE vocabulary (what the tests run)

``--tiny`` (or ``FOUNDRY_EXAMPLES_TINY=1``) only shrinks the BPE vocabulary; this example
trains no model. Tokenizer files go to ``--out`` (default ``runs/examples/05_tokenizers``),
replaced on a re-run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from llm_foundry import BPETokenizer, ByteTokenizer, CharTokenizer, load_tokenizer
from llm_foundry.data import builtin_corpus

from _common import example_parser, fresh_dir, parse_example_args

DEFAULT_OUT = "runs/examples/05_tokenizers"

SAMPLES = {
    "english": "The quick brown fox jumps over the lazy dog. A function returns a value.",
    "chinese": "分词器把文字变成数字，模型学习数字的顺序。",
    "emoji": "Ship it 🚀 then celebrate 🎉🙂 and thank the 👩‍💻 team!",
    "mixed": "Python 是一种编程语言 (a programming language) 🐍",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = example_parser("Byte, char and BPE tokenizers side by side.", DEFAULT_OUT, tiny_help="smaller BPE vocabulary")
    return parse_example_args(p, argv)



def roundtrip(name: str, tok, sample: str, text: str) -> bool:
    ids = tok.encode(text)
    back = tok.decode(ids)
    ok = back == text
    detail = "" if ok else f"  -> {json.dumps(back, ensure_ascii=False)}"
    print(f"roundtrip {name:<10} {sample:<8} {'OK' if ok else 'LOSSY'} ({len(ids)} ids){detail}")
    return ok


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = fresh_dir(Path(args.out))
    corpus = builtin_corpus()
    print(f"mode: {'tiny' if args.tiny else 'full'} | output: {out}")

    # 1. Byte tokenizer: nothing to train. Ids 0-255 are bytes; specials (pad, bos, eos,
    #    chat markers) come after.
    byte_tok = ByteTokenizer()
    print(f"[1] byte: vocab {byte_tok.vocab_size} (256 bytes + {len(byte_tok.special_tokens)} specials), "
          f"eos id {byte_tok.eos_id}")
    print(f"    '中' -> {byte_tok.encode('中')}   '🚀' -> {byte_tok.encode('🚀')}")

    # 2. Char tokenizer: built from the characters of the corpus (English only).
    char_tok = CharTokenizer()
    for doc in corpus:
        char_tok.add_chars(doc.text)
    print(f"[2] char: vocab {char_tok.vocab_size} after reading the built-in corpus "
          f"(ids 0, 1 = {char_tok.itos[0]}, {char_tok.itos[1]})")
    #    Unseen characters become <|unk|> ...
    zh = SAMPLES["chinese"]
    ids = char_tok.encode(zh)
    print(f"    unseen: {ids.count(char_tok.unk_id)} of {len(zh)} Chinese characters -> <|unk|> (id {char_tok.unk_id}); "
          f"decoded: {json.dumps(char_tok.decode(ids[:3], skip_special=False))}... (skipped by default)")
    #    ... unless the tokenizer may grow. New characters get new ids at the end, and every
    #    existing id stays what it was, so a trained model stays valid (MiniLLM.resize_vocab
    #    adds the rows for the new ids).
    english_before = char_tok.encode(SAMPLES["english"])
    size_before = char_tok.vocab_size
    for text in SAMPLES.values():
        char_tok.encode(text, grow=True)
    stable = char_tok.encode(SAMPLES["english"]) == english_before
    print(f"    grown: vocab {size_before} -> {char_tok.vocab_size}; ids of known characters unchanged: "
          f"{'OK' if stable else 'FAILED'}")

    # 3. BPE: byte-level, trained on the corpus. vocab_size counts the 256 bytes and the specials.
    vocab = 512 if args.tiny else 4096
    bpe_tok = BPETokenizer.train((d.text for d in corpus), vocab_size=vocab)
    pieces = [bpe_tok.decode([i]) for i in bpe_tok.encode("The function returns a value.")]
    print(f"[3] bpe: vocab {bpe_tok.vocab_size}, trained on {len(corpus)} documents; "
          f"'The function returns a value.' -> {json.dumps(pieces)}")

    # 4. Round-trips. Byte and BPE are lossless by construction; char is lossless for what
    #    it has seen (we grew it above); a fresh char tokenizer from the corpus is not.
    tokenizers = {"byte": byte_tok, "char": char_tok, "bpe": bpe_tok}
    print("[4] round-trips:")
    all_ok = True
    for sample, text in SAMPLES.items():
        for name, tok in tokenizers.items():
            all_ok &= roundtrip(name, tok, sample, text)
    fresh_char = CharTokenizer()
    for doc in corpus:
        fresh_char.add_chars(doc.text)
    lossy = not roundtrip("char(new)", fresh_char, "chinese", zh)

    # 5. Token counts: fewer tokens = more text per context window and per training step.
    print("[5] token counts:")
    print(f"    {'sample':<8} {'chars':>5} {'bytes':>5} {'byte':>5} {'char':>5} {'bpe':>5}")
    for sample, text in SAMPLES.items():
        counts = [len(tok.encode(text)) for tok in tokenizers.values()]
        print(f"    {sample:<8} {len(text):>5} {len(text.encode('utf-8')):>5} " + " ".join(f"{c:>5}" for c in counts))

    # 6. Save and load. byte/char files are our own small JSON; BPE is Hugging Face's
    #    tokenizer.json format. load_tokenizer tells them apart (a folder holding
    #    tokenizer.json works too).
    print("[6] save/load:")
    for name, tok in tokenizers.items():
        path = out / f"{name}_tokenizer.json"
        tok.save(path)
        loaded = load_tokenizer(path)
        same = all(loaded.encode(t) == tok.encode(t) for t in SAMPLES.values()) and loaded.vocab_size == tok.vocab_size
        all_ok &= same
        print(f"save/load {name:<5} {type(loaded).__name__:<14} {path.stat().st_size:>8,} bytes  ids identical: "
              f"{'OK' if same else 'FAILED'}")

    ok = all_ok and stable and lossy
    print(f"all checks: {'OK' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
