"""Peak memory of `foundry prepare` on a generated corpus: it must not grow with the corpus.

Writes a corpus of many documents (mixed English and Chinese) into a temp folder, runs
`foundry prepare` on it in a subprocess, and reports the child's peak RSS against the
bound of issue 21: 200 MiB + 3x the largest single document (its UTF-8 bytes).
Prints one JSON object; exits 1 when the bound is broken.

    python bench/prepare_memory.py [--gb 1] [--tokenizer byte|char|bpe] [--layout folder|lines|single]

``folder``: a folder of ``.jsonl`` files (one document a line, 100 B to 64 KB) and ``.txt``
files (one document each, up to about 2 MB); ``lines``: ``.jsonl`` files of short documents
(20 to 400 characters: millions of them); ``single``: one text file, one document.
The text is generated fast from a seeded pool of mixed en/zh lines (documents are slices
of it), so the corpus costs little more than writing it to disk.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MIB = 1 << 20
BASE_MIB = 200  # the bound: BASE_MIB + 3x the largest document
EN = ("the of and to in is that for it with as was on be by this are from at or an have not which but "
      "model language token memory stream shard corpus document train valid small large fast slow read "
      "write learn text data byte word line file folder split seed sample merge").split()


def _pool(rng: random.Random, chars: int = 8 * MIB) -> str:
    """About ``chars`` characters of lines, half English words, half Chinese characters."""
    zh = [chr(c) for c in range(0x4E00, 0x4E00 + 3000)]  # common CJK ideographs
    lines, n = [], 0
    while n < chars:
        if rng.random() < 0.5:
            line = " ".join(rng.choices(EN, k=rng.randint(4, 16))).capitalize() + "."
        else:
            line = "".join(rng.choices(zh, k=rng.randint(8, 40))) + "。"
        lines.append(line)
        n += len(line) + 1
    return "\n".join(lines)


def write_corpus(root: str | Path, total_bytes: int, layout: str = "folder", seed: int = 0) -> dict:
    """Write a corpus of about ``total_bytes`` under ``root``; its input path, size, documents, largest document."""
    rng = random.Random(seed)
    pool = _pool(rng)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)

    def piece(n: int) -> str:
        start = rng.randrange(len(pool) - n)
        return pool[start:start + n]

    written = docs = largest = 0
    if layout == "single":
        path = root / "corpus.txt"
        with open(path, "w", encoding="utf-8") as f:
            while written < total_bytes:
                data = piece(MIB).encode("utf-8")
                f.write(data.decode("utf-8"))
                written += len(data)
        return {"input": str(path), "bytes": written, "documents": 1, "largest_document_bytes": written}
    folder = root / "corpus"
    folder.mkdir(exist_ok=True)
    k = 0
    while written < total_bytes:
        if layout == "lines" or k % 8 != 7:  # a .jsonl file of up to 32 MB of documents
            with open(folder / f"part_{k:05d}.jsonl", "w", encoding="utf-8") as f:
                size = 0
                while size < 32 * MIB and written + size < total_bytes:
                    text = piece(rng.randint(20, 400) if layout == "lines" else rng.randint(100, 64 * 1024) // 2)
                    n = len(text.encode("utf-8"))
                    f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
                    size, docs, largest = size + n, docs + 1, max(largest, n)
            written += size
        else:  # a plain text file: one (large) document
            data = piece(rng.randint(MIB // 2, 4 * MIB) // 3).encode("utf-8")
            (folder / f"book_{k:05d}.txt").write_bytes(data)
            written, docs, largest = written + len(data), docs + 1, max(largest, len(data))
        k += 1
    return {"input": str(folder), "bytes": written, "documents": docs, "largest_document_bytes": largest}


# The child reports its own peak from /proc at exit (VmHWM). Its ru_maxrss would not do:
# Linux carries the maxrss of the image before exec over, and a child forked (vfork) from a
# large parent, such as a test process with PyTorch loaded, would start at the parent's size.
_CHILD = """
import atexit, runpy, sys
report = sys.argv.pop(1)
def hwm():
    with open("/proc/self/status") as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    with open(report, "w") as f:
        f.write(str(kib))
atexit.register(hwm)
sys.argv[0] = "foundry"
runpy.run_module("llm_foundry", run_name="__main__", alter_sys=True)
"""


def foundry_peak_rss(args: list[str], workdir: str | Path) -> tuple[float, int]:
    """Run ``foundry ARGS`` in a subprocess; its peak RSS in MiB and its exit status."""
    report = Path(workdir) / "peak_rss.txt"
    report.unlink(missing_ok=True)
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(report), *args], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT)
    if proc.returncode:
        sys.stderr.write(proc.stdout.decode("utf-8", "replace"))
    return int(report.read_text()) / 1024, proc.returncode


def measure(corpus: dict, out_dir: str | Path, tokenizer: str = "byte", extra: list[str] = ()) -> dict:
    """Prepare ``corpus`` (from :func:`write_corpus`) with ``foundry prepare``; the figures and pass/fail."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    one_line = out_dir / "one_line.txt"
    one_line.write_text("One line of text, 一行文字.\n", encoding="utf-8")
    baseline, _ = foundry_peak_rss(["prepare", str(one_line), "--tokenizer", tokenizer, "--out", str(out_dir / "tiny")],
                                   out_dir)
    start = time.perf_counter()
    peak, code = foundry_peak_rss(["prepare", corpus["input"], "--tokenizer", tokenizer, "--out", str(out_dir), *extra],
                                  out_dir)
    seconds = time.perf_counter() - start
    meta = json.loads((out_dir / "meta.json").read_text()) if code == 0 else {"splits": {}}
    bound = BASE_MIB + 3 * corpus["largest_document_bytes"] / MIB
    return {
        "tokenizer": tokenizer,
        "input_mib": round(corpus["bytes"] / MIB, 1),
        "documents": corpus["documents"],
        "largest_document_mib": round(corpus["largest_document_bytes"] / MIB, 2),
        "peak_rss_mib": round(peak, 1),
        "baseline_rss_mib": round(baseline, 1),  # the same command on a one-line file
        "bound_mib": round(bound, 1),
        "tokens": {name: info["tokens"] for name, info in meta["splits"].items()},
        "seconds": round(seconds, 1),
        "exit_code": code,
        "pass": code == 0 and peak <= bound,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gb", type=float, default=1.0, help="corpus size in GiB (default: 1)")
    ap.add_argument("--tokenizer", choices=["byte", "char", "bpe"], default="byte")
    ap.add_argument("--layout", choices=["folder", "lines", "single"], default="folder")
    ap.add_argument("--dir", help="where to write the corpus and the data folder (default: a temp folder, removed)")
    args, extra = ap.parse_known_args()  # anything else goes to `foundry prepare`
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        corpus = write_corpus(tmp, int(args.gb * (1 << 30)), args.layout)
        result = {"layout": args.layout, **measure(corpus, Path(tmp) / "data", args.tokenizer, extra)}
    print(json.dumps(result))
    return 0 if result["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
