"""Token shards: flat binary arrays of token ids, memory-mapped when read.

A data folder holds ``tokenizer.json``, ``train_000.bin ...``, ``val_000.bin ...`` and
``meta.json`` (written last, so its presence means the folder is complete).
Documents are joined with the tokenizer's EOS id where it has one.

:func:`prepare_dataset` streams: it reads the corpus two or three times (a scan for the
lengths, the split and the char alphabet; BPE training on a sample of the training text;
tokenizing) and never holds more than a few pieces of text and one batch of tokens, so
its memory does not grow with the corpus.
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ..tokenizers import UNK, Tokenizer, build_tokenizer, load_tokenizer
from ..utils.errors import FoundryError
from ..utils.io import atomic_write_json, atomic_writer, read_json
from .sources import PIECE_CHARS, Corpus, Document, Unit, split_pieces
from .split import LengthLog, SplitPlan, check_val_fraction, plan_split, split_documents  # noqa: F401  (split_documents: re-exported)

META_FORMAT = "llm_foundry.tokens"
SHARD_TOKENS = 1 << 27  # 128M tokens per shard file keeps any one file < 512 MB
# BPE merges are learned from about this much of the training text (pieces spread evenly over
# it). The trainer of `tokenizers` holds every distinct word it sees, about 20 bytes per byte of
# English text and up to 100 per byte of Chinese (a run of Han characters is one "word", rarely
# seen twice): 1 MB keeps it near 100 MB and is plenty for a vocabulary of a few thousand.
TOKENIZER_SAMPLE_BYTES = 1_000_000


def _dtype_for(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 65535 else np.dtype(np.uint32)


class _Scan:
    """The first pass: document lengths, sizes, sources and (for char) the alphabet."""

    def __init__(self, want_alphabet: bool, progress=None, task=None):
        self.lengths = LengthLog()
        self.chars = self.bytes = 0
        self.alphabet: dict[str, None] = {}  # characters in order of first appearance
        self.sources: set[str] = set()
        self.want_alphabet = want_alphabet
        self.progress, self.task = progress, task

    def read(self, unit: Unit) -> None:
        """Read one unit; its figures count only once it has been read to the end."""
        mark = self.lengths.count
        chars = nbytes = 0
        doc = -1  # characters of the document being read
        alphabet: dict[str, None] = {}
        try:
            for new, piece in unit.read():
                if new:
                    if doc >= 0:
                        self.lengths.append(doc)
                    doc = 0
                doc += len(piece)
                chars += len(piece)
                nbytes += len(piece.encode("utf-8"))
                if self.want_alphabet:
                    alphabet.update(dict.fromkeys(piece))
                if self.progress is not None:
                    self.progress.advance(self.task, len(piece))
            if doc >= 0:
                self.lengths.append(doc)
        except BaseException:
            self.lengths.truncate(mark)
            raise
        self.chars += chars
        self.bytes += nbytes
        self.alphabet.update(alphabet)
        self.sources.add(unit.source)


def _routed(corpus: Corpus, plan: SplitPlan, blocks) -> Iterator[tuple[str, bool, str]]:
    """``(split, starts a document, piece)`` for every piece of the corpus, in order."""
    decisions = plan.decisions(blocks)
    offset, seen = 0, 0
    for new, piece in corpus.pieces():
        if new:
            seen += 1
            split = "val" if next(decisions, False) else "train"
        if plan.cut is None:
            yield split, new, piece
            continue
        # A single document: its first `cut` characters train, the rest validates.
        if new and plan.cut == 0:
            yield "train", True, ""
        head = piece[:max(plan.cut - offset, 0)]
        if head:
            yield "train", new, head
        if len(head) < len(piece):
            yield "val", offset + len(head) == plan.cut, piece[len(head):]
        offset += len(piece)
    if seen != plan.n_docs:
        raise FoundryError("the input changed while it was being prepared; run prepare again")


class _ShardFiles:
    """A split's shard files, written as tokens arrive; each appears (atomically) once full or closed."""

    def __init__(self, out: Path, split: str):
        self.out, self.split = out, split
        self.names: list[str] = []
        self._writer = self._file = None
        self._filled = 0

    def write(self, tokens: np.ndarray) -> None:
        while len(tokens):
            if self._file is None:
                self._open()
            n = min(len(tokens), SHARD_TOKENS - self._filled)
            self._file.write(tokens[:n].tobytes())
            self._filled += n
            tokens = tokens[n:]
            if self._filled == SHARD_TOKENS:
                self._end()

    def _open(self) -> None:
        self.names.append(f"{self.split}_{len(self.names):03d}.bin")
        self._writer = atomic_writer(self.out / self.names[-1])
        self._file, self._filled = self._writer.__enter__(), 0

    def _end(self, *exc) -> None:
        writer, self._writer, self._file = self._writer, None, None
        writer.__exit__(*(exc or (None, None, None)))

    def close(self) -> list[str]:
        """Finish the last shard (an empty split still gets one, empty, file)."""
        if self._file is None and not self.names:
            self._open()
        if self._file is not None:
            self._end()
        return self.names

    def abort(self) -> None:
        """Drop the shard being written (its temp file), after an error."""
        if self._file is not None:
            self._end(*sys.exc_info())


class _SplitWriter:
    """Tokenizes one split's pieces in batches and appends the ids to its shards."""

    def __init__(self, out: Path, name: str, tok: Tokenizer):
        self.name, self.tok = name, tok
        self.sep = getattr(tok, "eos_id", None)
        self.unk = tok.token_id(UNK)
        self.dtype = _dtype_for(tok.vocab_size)
        self.shards = _ShardFiles(out, name)
        self.batch: list[str] = []
        self.ends: list[bool] = []
        self.batch_chars = self.tokens = self.documents = self.bytes = self.unknown = 0

    def add(self, piece: str, new: bool, end: bool) -> None:
        """Queue ``piece``; ``new``: it starts a document; ``end``: it ends one (an EOS follows)."""
        self.documents += new
        self.bytes += len(piece.encode("utf-8"))
        self.batch.append(piece)
        self.ends.append(end)
        self.batch_chars += len(piece)
        if self.batch_chars >= PIECE_CHARS or len(self.batch) >= 256:
            self.flush()

    def flush(self) -> None:
        if not self.batch:
            return
        # One text at a time: `encode_batch` would encode on every core, and each thread's
        # allocations stay with the process (~60 MB more on two cores, more on more).
        ids = [self.tok.encode(text) for text in self.batch]
        if self.sep is not None:
            for row, end in zip(ids, self.ends):
                if end:
                    row.append(self.sep)
        tokens = np.fromiter(itertools.chain.from_iterable(ids), dtype=self.dtype, count=sum(map(len, ids)))
        if self.unk is not None:
            self.unknown += int(np.count_nonzero(tokens == self.unk))
        self.shards.write(tokens)
        self.tokens += len(tokens)
        self.batch, self.ends, self.batch_chars = [], [], 0

    def close(self) -> dict:
        """Finish the shards; the split's entry of ``meta.json``."""
        self.flush()
        if self.unknown:
            # Only a reused tokenizer (--tokenizer-from) can meet characters it never saw.
            print(f"warning: {self.unknown} character(s) of the {self.name} text are unknown to the tokenizer "
                  f"and became <|unk|>", file=sys.stderr)
        return {"shards": self.shards.close(), "tokens": self.tokens, "documents": self.documents,
                "bytes": self.bytes, "unknown_tokens": self.unknown}


def _train_sample(corpus: Corpus, plan: SplitPlan, blocks, fraction: float) -> Iterator[str]:
    # Systematic sampling: a training piece is taken while the sample is behind `fraction` of the
    # training text read so far, so it is spread evenly over the corpus (and starts with its first piece).
    seen = taken = 0
    for split, _, piece in _routed(corpus, plan, blocks):
        if split != "train":
            continue
        n = len(piece.encode("utf-8"))
        seen += n
        if taken < fraction * seen:
            taken += n
            # `tokenizers` buffers 256 texts of its input: small pieces keep that buffer small.
            yield from split_pieces((piece,), max_chars=4096)


def _fit(corpus: Corpus, scan: _Scan, tokenizer: str | Tokenizer, vocab_size: int | None, val_fraction: float,
         seed: int, sample_bytes: int) -> tuple[Tokenizer, SplitPlan]:
    """The split, and the tokenizer: built, fitted, or the one given."""
    blocks = scan.lengths.blocks
    plan = plan_split(blocks, scan.lengths.count, scan.chars, val_fraction, seed)
    if tokenizer == "char":
        # The vocabulary covers all text, so validation has no unknowns.
        return build_tokenizer("char", ["".join(scan.alphabet)]), plan
    if tokenizer == "bpe":
        # Merges are learned from training text only, so validation stays held out.
        train_bytes = scan.bytes * (1 - plan.val_chars / max(scan.chars, 1))
        fraction = sample_bytes / train_bytes if sample_bytes and train_bytes else 1.0
        return build_tokenizer("bpe", _train_sample(corpus, plan, blocks, fraction), vocab_size), plan
    if isinstance(tokenizer, str):
        return build_tokenizer(tokenizer, (), vocab_size), plan
    return tokenizer, plan


def _write_splits(corpus: Corpus, plan: SplitPlan, scan: _Scan, tok: Tokenizer, out: Path, progress) -> dict:
    """Tokenize the corpus into the shards of its splits; their entries of ``meta.json``."""
    task = progress.add_task("tokenizing", total=scan.chars)
    writers: dict[str, _SplitWriter] = {}
    try:
        last = None  # (split, starts a document, piece), held until we know whether it ends one
        for item in _routed(corpus, plan, scan.lengths.blocks):
            if last is not None:
                writers[last[0]].add(last[2], last[1], end=item[1])
                progress.advance(task, len(last[2]))
            if item[0] not in writers:
                writers[item[0]] = _SplitWriter(out, item[0], tok)
            last = item
        if last is not None:
            writers[last[0]].add(last[2], last[1], end=True)
        return {name: writers[name].close() for name in ("train", "val") if name in writers}
    except BaseException:
        for w in writers.values():
            w.shards.abort()
        raise


def prepare_dataset(docs: Sequence[Document] | Corpus, tokenizer: str | Tokenizer, out_dir: str | Path, *,
                    vocab_size: int | None = None, val_fraction: float = 0.1, seed: int = 0,
                    show_progress: bool = True, tokenizer_sample_bytes: int = TOKENIZER_SAMPLE_BYTES) -> dict:
    """Tokenize a corpus into a data folder and return its meta, in memory that does not grow with the corpus.

    Args:
        docs: the corpus: a :class:`Corpus` (streamed from disk) or documents in memory.
        tokenizer: ``char``, ``byte``, ``bpe``, or a ready tokenizer object.
        out_dir: the data folder to write.
        vocab_size: BPE vocabulary size (default 4096).
        val_fraction: share of the text held out for validation.
        seed: seeds the document split.
        show_progress: show progress bars (on a terminal).
        tokenizer_sample_bytes: BPE learns its merges from about this many bytes of the
            training text (pieces spread evenly over it); 0 for all of it.
    """
    from ..utils.progress import progress_bar

    corpus = docs if isinstance(docs, Corpus) else Corpus.from_documents(docs)
    if not corpus.units:
        raise FoundryError("no documents to prepare")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FoundryError(f"--out exists and is not a folder: {out}")
    check_val_fraction(val_fraction)
    if tokenizer_sample_bytes < 0:
        raise FoundryError(f"--tokenizer-sample-bytes must be 0 (all) or more, got {tokenizer_sample_bytes}")
    with progress_bar(enabled=show_progress) as progress:
        scan = _Scan(tokenizer == "char", progress, progress.add_task("reading", total=None))
        try:
            corpus.visit(scan.read)
            tok, plan = _fit(corpus, scan, tokenizer, vocab_size, val_fraction, seed, tokenizer_sample_bytes)
            out.mkdir(parents=True, exist_ok=True)
            splits = _write_splits(corpus, plan, scan, tok, out, progress)
        finally:
            scan.lengths.close()
    tok.save(out / "tokenizer.json")
    meta = {
        "format": META_FORMAT,
        "version": 1,
        "tokenizer": tok.kind,
        "vocab_size": tok.vocab_size,
        "dtype": _dtype_for(tok.vocab_size).name,
        "val_fraction": val_fraction,
        "seed": seed,
        "sources": sorted(scan.sources)[:1000],
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
