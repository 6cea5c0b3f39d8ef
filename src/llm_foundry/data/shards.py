"""Token shards: flat binary arrays of token ids, memory-mapped when read.

A data folder holds ``tokenizer.json``, ``train_000.bin ...``, ``val_000.bin ...`` and
``meta.json`` (written last, so its presence means the folder is complete).
Documents are joined with the tokenizer's EOS id where it has one.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from ..tokenizers import UNK, Tokenizer, build_tokenizer, load_tokenizer
from ..utils.errors import FoundryError
from ..utils.io import atomic_write_bytes, atomic_write_json, read_json
from .sources import Document

META_FORMAT = "llm_foundry.tokens"
SHARD_TOKENS = 1 << 27  # 128M tokens per shard file keeps any one file < 512 MB


def split_documents(docs: Sequence[Document], val_fraction: float, seed: int = 0) -> tuple[list[Document], list[Document]]:
    """Document-level split; a single document is split contiguously (last part = val).

    Documents are visited in a seeded random order and go to validation while they
    keep its share of the characters near ``val_fraction`` (a document that would
    overshoot 1.5x the target is passed over), always leaving one for training.
    """
    if not 0 <= val_fraction < 1:
        raise FoundryError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    if val_fraction == 0:
        return list(docs), []
    if len(docs) == 1:
        text = docs[0].text
        cut = int(len(text) * (1 - val_fraction))
        return [Document(text[:cut], docs[0].source)], [Document(text[cut:], docs[0].source)]
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    target = val_fraction * sum(len(d.text) for d in docs)
    val_idx, val_chars = set(), 0
    for i in order:
        if val_chars >= target or len(val_idx) == len(docs) - 1:
            break
        if val_chars + len(docs[i].text) <= 1.5 * target:
            val_idx.add(i)
            val_chars += len(docs[i].text)
    if not val_idx:  # every document is larger than the target: hold out the smallest
        val_idx.add(min(order, key=lambda i: len(docs[i].text)))
    train = [d for i, d in enumerate(docs) if i not in val_idx]
    val = [d for i, d in enumerate(docs) if i in val_idx]
    return train, val


def _dtype_for(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 65535 else np.dtype(np.uint32)


def _encode_split(tokenizer: Tokenizer, docs: Sequence[Document], progress=None, task=None) -> np.ndarray:
    sep = getattr(tokenizer, "eos_id", None)
    parts: list[list[int]] = []
    batch = 256
    for i in range(0, len(docs), batch):
        chunk = docs[i:i + batch]
        for ids in tokenizer.encode_batch([d.text for d in chunk]):
            if sep is not None:
                ids.append(sep)
            parts.append(ids)
        if progress is not None:
            progress.advance(task, len(chunk))
    flat = [t for p in parts for t in p]
    return np.asarray(flat, dtype=_dtype_for(tokenizer.vocab_size))


def _write_shards(out: Path, split: str, tokens: np.ndarray) -> list[str]:
    names = []
    for k, start in enumerate(range(0, max(len(tokens), 1), SHARD_TOKENS)):
        name = f"{split}_{k:03d}.bin"
        atomic_write_bytes(out / name, tokens[start:start + SHARD_TOKENS].tobytes())
        names.append(name)
    return names


def prepare_dataset(docs: Sequence[Document], tokenizer: str | Tokenizer, out_dir: str | Path, *,
                    vocab_size: int | None = None, val_fraction: float = 0.1, seed: int = 0,
                    show_progress: bool = True) -> dict:
    """Tokenize ``docs`` into a data folder and return its meta.

    Args:
        docs: the corpus (see :func:`read_documents`).
        tokenizer: ``char``, ``byte``, ``bpe``, or a ready tokenizer object.
        out_dir: the data folder to write.
        vocab_size: BPE vocabulary size (default 4096).
        val_fraction: share of the text held out for validation.
        seed: seeds the document split.
    """
    from ..utils.progress import progress_bar

    if not docs:
        raise FoundryError("no documents to prepare")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FoundryError(f"--out exists and is not a folder: {out}")
    train_docs, val_docs = split_documents(docs, val_fraction, seed)
    if isinstance(tokenizer, str):
        # char: the vocabulary covers all text, so validation has no unknowns;
        # bpe: merges are learned from training text only, so validation stays held out.
        fit = docs if tokenizer == "char" else train_docs
        tok = build_tokenizer(tokenizer, (d.text for d in fit), vocab_size)
    else:
        tok = tokenizer
    out.mkdir(parents=True, exist_ok=True)
    unk_id = tok.token_id(UNK)
    splits = {}
    with progress_bar(enabled=show_progress) as progress:
        for name, split_docs in (("train", train_docs), ("val", val_docs)):
            if not split_docs:
                continue
            task = progress.add_task(f"tokenizing {name}", total=len(split_docs))
            tokens = _encode_split(tok, split_docs, progress, task)
            unknown = int((tokens == unk_id).sum()) if unk_id is not None else 0
            if unknown:
                # Only a reused tokenizer (--tokenizer-from) can meet characters it never saw.
                print(f"warning: {unknown} character(s) of the {name} text are unknown to the tokenizer "
                      f"and became <|unk|>", file=sys.stderr)
            splits[name] = {
                "shards": _write_shards(out, name, tokens),
                "tokens": int(len(tokens)),
                "documents": len(split_docs),
                "bytes": sum(len(d.text.encode("utf-8")) for d in split_docs),
                "unknown_tokens": unknown,
            }
    tok.save(out / "tokenizer.json")
    meta = {
        "format": META_FORMAT,
        "version": 1,
        "tokenizer": tok.kind,
        "vocab_size": tok.vocab_size,
        "dtype": _dtype_for(tok.vocab_size).name,
        "val_fraction": val_fraction,
        "seed": seed,
        "sources": sorted({d.source for d in docs})[:1000],
        "splits": splits,
    }
    atomic_write_json(out / "meta.json", meta)
    return meta


class TokenDataset:
    """A prepared data folder: its tokenizer, meta, and memory-mapped splits."""

    def __init__(self, data_dir: str | Path):
        self.dir = Path(data_dir)
        if not self.dir.is_dir():
            raise FoundryError(f"data folder not found: {self.dir} (create it with `foundry prepare`)")
        meta_path = self.dir / "meta.json"
        if not meta_path.is_file():
            raise FoundryError(f"not a prepared data folder (no meta.json): {self.dir}")
        self.meta = read_json(meta_path, "data meta")
        if not isinstance(self.meta, dict) or self.meta.get("format") != META_FORMAT:
            raise FoundryError(f"meta.json is not an llm-foundry token meta: {meta_path}")
        self.tokenizer = load_tokenizer(self.dir / "tokenizer.json")
        self.dtype = np.dtype(self.meta["dtype"])
        self._maps: dict[str, list[np.ndarray]] = {}

    def split(self, name: str) -> list[np.ndarray]:
        """The memory-mapped shards of ``name`` (train/val)."""
        if name not in self._maps:
            info = self.meta["splits"].get(name)
            if not info:
                raise FoundryError(f"data folder has no '{name}' split: {self.dir}")
            arrays = []
            for shard in info["shards"]:
                path = self.dir / shard
                if not path.is_file():
                    raise FoundryError(f"shard missing: {path}")
                if path.stat().st_size % self.dtype.itemsize:
                    raise FoundryError(f"shard is truncated: {path}")
                arrays.append(np.memmap(path, dtype=self.dtype, mode="r") if path.stat().st_size else np.zeros(0, self.dtype))
            if sum(len(a) for a in arrays) != info["tokens"]:
                raise FoundryError(f"'{name}' shards hold a different token count than meta.json says: {self.dir}")
            self._maps[name] = arrays
        return self._maps[name]

    def has_split(self, name: str) -> bool:
        return bool(self.meta["splits"].get(name))

    def bytes_per_token(self, name: str) -> float:
        """UTF-8 bytes per token in ``name`` (to turn nats/token into bits/byte)."""
        info = self.meta["splits"][name]
        return info["bytes"] / max(info["tokens"], 1)
