"""The local corpus of H2Q-Evo: ``.txt`` files in, a fixed train/val/test split out.

The split is made once per state folder and never changes afterwards: every
training epoch, every evolution candidate and every comparison is scored on the
same held-out text. ``val`` decides (best epoch, accept/reject); ``test`` is never
used for a decision, so a loss reported on it is not flattered by selection.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

from ..data import Document, prepare_dataset, read_text_file, split_documents
from ..tokenizers import Tokenizer
from ..utils.errors import FoundryError
from ..utils.io import atomic_write_json, atomic_write_text, read_json

DEFAULT_DATA_DIR = "data/training_data"
SPLIT_FILE, TEST_FILE = "split.json", "test.txt"

SAMPLE_ZH = """\
人工智能是研究如何让机器像人一样思考和学习的科学。机器学习是人工智能的一个分支，它让计算机从数据中学习规律，而不是依靠人写下的每一条规则。
语言模型读入一段文字，预测下一个字。训练的时候，模型不断比较自己的预测和真实的下一个字，并调整参数，让预测越来越准。
本系统完全离线运行：数据、训练、推理和模型文件都保存在本地，不需要任何网络连接，也不调用任何云服务。
自我进化的意思是：模型从本地知识库中找出自己最不擅长的段落，生成新的练习文本，训练几个候选模型，只有在留出数据上真正变好的候选才会取代当前模型。
春眠不觉晓，处处闻啼鸟。夜来风雨声，花落知多少。
床前明月光，疑是地上霜。举头望明月，低头思故乡。
学而时习之，不亦说乎？有朋自远方来，不亦乐乎？人不知而不愠，不亦君子乎？
"""


def _warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr)


def find_text_files(source: str | Path) -> list[Path]:
    """All ``.txt`` files under ``source`` (recursively, sorted), or ``[source]`` for a file."""
    path = Path(source)
    if path.is_file():
        return [path]
    if not path.is_dir():
        return []
    return sorted(p for p in path.rglob("*.txt")
                  if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts))


def create_sample_data(folder: str | Path) -> list[Path]:
    """Write a small bilingual sample corpus into ``folder`` and return its file(s).

    English comes from Python's own reference documentation (every Python ships it), so
    the sample is large enough to train on without any download; the Chinese lines are
    interleaved through it, so the train, val and test parts all hold both languages.
    """
    from ..data import builtin_corpus

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    english = "\n\n".join(d.text for d in builtin_corpus())[:300_000]
    zh_lines = [line for line in SAMPLE_ZH.splitlines() if line.strip()]
    chunk = 3000
    parts = []
    for k, start in enumerate(range(0, len(english), chunk)):
        parts.append(english[start:start + chunk])
        parts.append("\n" + zh_lines[k % len(zh_lines)] + "\n")
    path = folder / "sample_data.txt"
    atomic_write_text(path, "".join(parts))
    return [path]


def load_corpus(source: str | Path, *, create_samples: bool = True, quiet: bool = False) -> list[Document]:
    """Read every ``.txt`` file of ``source``; unreadable files are skipped with a warning.

    Args:
        source: a folder (searched recursively for ``.txt``) or one text file.
        create_samples: when the folder holds no ``.txt`` files, write sample data
            into it (and say so) instead of failing.

    Raises:
        FoundryError: nothing readable, or no files and ``create_samples`` is off.
    """
    path = Path(source)
    files = find_text_files(path)
    if not files:
        if path.exists() and not path.is_dir():
            raise FoundryError(f"not a folder or text file: {path}")
        if not create_samples:
            raise FoundryError(f"no .txt files in {path}")
        files = create_sample_data(path)
        print(f"note: {path} had no .txt files; created sample data there ({', '.join(f.name for f in files)}). "
              f"Put your own .txt files into {path} to train on them.", file=sys.stderr if quiet else sys.stdout)
    docs = []
    for f in files:
        try:
            docs.append(Document(read_text_file(f), str(f)))
        except FoundryError as e:
            _warn(f"skipped: {e}")
    if not docs:
        raise FoundryError(f"no readable .txt files in {path}")
    return docs


def fingerprint(docs: list[Document]) -> str:
    """A short hash of the corpus text (to notice when the data folder changed)."""
    h = hashlib.sha256()
    for d in docs:
        h.update(d.source.encode("utf-8", "replace"))
        h.update(hashlib.sha256(d.text.encode("utf-8")).digest())
    return h.hexdigest()[:16]


def make_split(docs: list[Document], tokenizer: str | Tokenizer, data_dir: str | Path, *, val_fraction: float = 0.05,
               test_fraction: float = 0.05, vocab_size: int | None = None, seed: int = 0, quiet: bool = False) -> dict:
    """Tokenize ``docs`` into ``data_dir`` with a train/val split plus a ``test.txt``.

    ``test`` is carved off first (the end of a single document, or whole documents),
    then the rest is split into train and val by :func:`prepare_dataset`.
    """
    if not 0 < val_fraction < 0.5 or not 0 <= test_fraction < 0.5:
        raise FoundryError("--val-fraction must be in (0, 0.5) and --test-fraction in [0, 0.5)")
    data_dir = Path(data_dir)
    rest, test = split_documents(docs, test_fraction, seed) if test_fraction > 0 else (list(docs), [])
    meta = prepare_dataset(rest, tokenizer, data_dir, vocab_size=vocab_size,
                           val_fraction=val_fraction / (1 - test_fraction), seed=seed, show_progress=not quiet)
    if test:
        atomic_write_text(data_dir / TEST_FILE, "\n".join(d.text for d in test))
    info = {"fingerprint": fingerprint(docs), "sources": sorted({d.source for d in docs})[:1000],
            "val_fraction": val_fraction, "test_fraction": test_fraction, "seed": seed,
            "tokenizer": meta["tokenizer"], "vocab_size": meta["vocab_size"],
            "tokens": {k: v["tokens"] for k, v in meta["splits"].items()},
            "test_chars": sum(len(d.text) for d in test)}
    atomic_write_json(data_dir / SPLIT_FILE, info)
    return info


def read_split(data_dir: str | Path) -> dict:
    """The ``split.json`` of a state's data folder."""
    return read_json(Path(data_dir) / SPLIT_FILE, "held-out split info")


def read_test_text(data_dir: str | Path) -> str | None:
    """The test text of a split, or None when the split has none."""
    path = Path(data_dir) / TEST_FILE
    return path.read_text(encoding="utf-8") if path.is_file() else None
