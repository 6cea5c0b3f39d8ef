"""Example 02: train on your own data: a folder of .txt files plus a .jsonl file.

What it shows:
  1. the input formats ``read_documents`` accepts, written here by the script itself:
     a folder of ``.txt`` files (read recursively; binary and hidden files are skipped)
     and a ``.jsonl`` file with one ``{"text": ...}`` record per line, some of them Chinese;
  2. one document per file / per jsonl line, and the document-level train/val split;
  3. a byte-level BPE tokenizer trained on the training documents (``prepare_dataset(..., "bpe")``),
     and how it splits English and Chinese;
  4. a short training run with ``Trainer`` and its validation loss;
  5. sampling from an English and a Chinese prompt.

Run it from the repository root:

    python examples/02_custom_data.py               # about a minute of training
    python examples/02_custom_data.py --tiny        # a few seconds (what the tests run)

``--tiny`` (or ``FOUNDRY_EXAMPLES_TINY=1``) shrinks the model and the run. Output goes to
``--out`` (default ``runs/examples/02_custom_data``), replaced on a re-run. To use your own
files instead, pass them to ``read_documents([...])`` in step 2, or run
``foundry prepare my_texts/ notes.jsonl --tokenizer bpe --out data``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from llm_foundry import Generator, Trainer
from llm_foundry.config import load_config
from llm_foundry.data import builtin_corpus, prepare_dataset, read_documents
from llm_foundry.tokenizers import load_tokenizer

from _common import example_parser, fresh_dir, parse_example_args

DEFAULT_OUT = "runs/examples/02_custom_data"

TINY_OVERRIDES = [
    "model.dim=32", "model.n_layers=2", "model.n_heads=2", "model.max_seq_len=64",
    "train.batch_size=8", "train.max_steps=30", "train.warmup_steps=5", "train.lr=3e-3",
    "train.eval_batches=4", "train.eval_interval=0", "train.log_interval=10", "train.checkpoint_interval=0",
]
FULL_OVERRIDES = [
    "train.time_budget=60", "train.max_steps=100000", "train.eval_interval=50", "train.log_interval=5",
    "train.warmup_steps=20", "train.checkpoint_interval=0",
]

# Hand-written notes: the kind of text a person keeps in a folder.
NOTES = {
    "garden.txt": (
        "Garden notes. The tomatoes need water every morning in July. The basil grows best next to the "
        "tomatoes, and the mint must stay in its own pot, or it takes over the whole bed. In autumn we cut "
        "the roses back and cover the soil with leaves.\n"
    ),
    "kitchen/bread.txt": (
        "Bread. Mix 500 g flour, 350 g water, 10 g salt and a little yeast. Let the dough rest overnight. "
        "In the morning fold it, shape it, and bake it at 240 degrees for forty minutes. "
        "A good crust sounds hollow when you knock on it.\n"
    ),
    "kitchen/tea.txt": (
        "Tea. Green tea wants water at 80 degrees and two minutes; black tea wants boiling water and four. "
        "Never squeeze the bag.\n"
    ),
}

# One JSON object per line with a "text" field; Chinese and English mixed.
JSONL_RECORDS = [
    "今天天气很好，我们去公园散步。",
    "我喜欢用 Python 写程序，因为它简单又好读。",
    "小模型也能学会语言的规律，只要数据足够干净。",
    "分词器把文字变成数字，模型再学习这些数字的顺序。",
    "早上喝一杯绿茶，下午读一本书，晚上写日记。",
    "北京的秋天很短，但是非常美丽。",
    "学习一门新的语言需要耐心和练习。",
    "这个例子展示了如何用自己的数据训练模型。",
    "The tokenizer learns common pieces of words, so frequent words become a single token.",
    "A small language model predicts the next token from the tokens before it.",
    "中文和 English 可以出现在同一个句子里。",
    "训练结束以后，我们用验证集的损失来判断模型学得好不好。",
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = example_parser("Prepare a folder of .txt files and a .jsonl file with BPE, then train.", DEFAULT_OUT)
    return parse_example_args(p, argv)



def write_corpus(root: Path, n_manual_pages: int) -> tuple[Path, Path]:
    """Write the example's own input files; returns (folder of .txt files, .jsonl file)."""
    folder = root / "my_texts"
    for name, text in NOTES.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text, encoding="utf-8")
    # Some bulk, so there is enough to learn from: pages of the built-in corpus, one file each.
    pages = folder / "manual"
    pages.mkdir(parents=True)
    for i, doc in enumerate(builtin_corpus()[:n_manual_pages]):
        (pages / f"page_{i:02d}.txt").write_text(doc.text, encoding="utf-8")
    # Things a real folder contains that are not text: skipped (binary with a warning, hidden silently).
    (folder / "photo.jpg").write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01")
    (folder / ".notes.swp").write_text("editor swap file", encoding="utf-8")

    jsonl = root / "sentences.jsonl"
    with open(jsonl, "w", encoding="utf-8") as f:
        for i, text in enumerate(JSONL_RECORDS * 3):  # repeated so BPE sees each pair often enough to merge
            f.write(json.dumps({"id": i, "text": text}, ensure_ascii=False) + "\n")
    return folder, jsonl


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = fresh_dir(Path(args.out))
    print(f"mode: {'tiny' if args.tiny else 'full'} | output: {out}")

    # 1. Write the inputs: a folder of .txt files (with subfolders) and a .jsonl file.
    folder, jsonl = write_corpus(out / "inputs", n_manual_pages=40 if args.tiny else 79)
    n_txt = sum(1 for p in folder.rglob("*.txt"))
    print(f"[1] wrote {n_txt} .txt files under {folder} and {len(JSONL_RECORDS) * 3} records in {jsonl}")

    # 2. Read them. A folder is read recursively and leniently (binary/non-UTF-8 files are
    #    skipped with a warning on stderr); each file is one document, each jsonl line is one.
    docs = read_documents([folder, jsonl])
    kinds = Counter("jsonl" if d.source.startswith(str(jsonl)) else "txt" for d in docs)
    print(f"[2] read {len(docs)} documents: {kinds['txt']} from .txt files, {kinds['jsonl']} from .jsonl lines")

    # 3. Tokenize with a byte-level BPE learned from the training documents (10% held out).
    vocab_size = 512 if args.tiny else 2048
    meta = prepare_dataset(docs, "bpe", out / "data", vocab_size=vocab_size, val_fraction=0.1, show_progress=False)
    for name, info in meta["splits"].items():
        print(f"[3] {name}: {info['documents']} documents, {info['tokens']:,} tokens, "
              f"{info['bytes'] / info['tokens']:.2f} bytes/token")
    tok = load_tokenizer(out / "data")  # the data folder carries its tokenizer.json
    print(f"    tokenizer: {tok.kind}, vocab {tok.vocab_size}")
    for text in ("The tokenizer learns common pieces of words.", "分词器把文字变成数字。"):
        ids = tok.encode(text)
        ok = "OK" if tok.decode(ids) == text else "FAILED"
        pieces = [tok.decode([i]) for i in ids]
        # A piece that is part of a multi-byte character decodes to U+FFFD; show ids then.
        shown = f"ids {ids}" if any("\ufffd" in piece for piece in pieces) else json.dumps(pieces, ensure_ascii=False)
        print(f"    {len(text)} chars -> {len(ids)} tokens ({len(ids) / len(text):.1f}/char), round-trip {ok}: {shown}")
    print("    (a Chinese character is 3 UTF-8 bytes; BPE merges them only where the corpus repeats them"
          " often, and Chinese is a small share of this one)")

    # 4. Train briefly. vocab_size comes from the data folder's tokenizer.
    model_cfg, train_cfg = load_config("tiny", TINY_OVERRIDES if args.tiny else FULL_OVERRIDES)
    run_dir = out / "run"
    summary = Trainer(model_cfg, train_cfg, out / "data", run_dir).run()
    print(f"[4] trained {summary['step']} steps on {summary['tokens_seen']:,} tokens")
    print(f"    val loss {summary['val_loss']:.4f} nats/token | {summary['val_bits_per_byte']:.3f} bits/byte")

    # 5. Sample from an English and a Chinese prompt (BPE is byte-level: nothing is unknown).
    gen = Generator.from_pretrained(run_dir)
    for prompt in ("The bread", "今天"):
        text = gen.generate(prompt, max_new_tokens=40, temperature=0.8, top_k=50, seed=1)
        print(f"[5] sample: {json.dumps(prompt + text, ensure_ascii=False)}")
    print(f"done: model folder {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
