"""Reading text: files, folders and ``.jsonl``, streamed, with one-line errors for bad input.

A *document* is the unit of the train/validation split: a whole file, one line of
a ``.jsonl`` file, or one topic of the built-in corpus.

Nothing here holds a whole file in memory: a file is sniffed from its first block,
decoded block by block, and handed on as *pieces* of at most :data:`PIECE_CHARS`
characters, so a 2 GB corpus, or a 2 GB file that is one document, reads in bounded
memory. A :class:`Corpus` can be read as often as a caller needs (``prepare`` reads
it two or three times) without keeping any of it.
"""

from __future__ import annotations

import codecs
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

from ..utils.errors import FoundryError

# A NUL byte in the first few KiB is how we tell binary files (images, archives,
# model weights) from text; no real text file contains one.
_SNIFF_BYTES = 8192
_BLOCK_BYTES = 1 << 20  # bytes read (and decoded) at a time
PIECE_CHARS = 1 << 18  # the most characters of one document tokenized at once
JSONL_TEXT_KEYS = ("text", "content")


@dataclass
class Document:
    """One document of a corpus.

    Attributes:
        text: the document's text.
        source: where it came from (a file path, or ``pydoc_data.topics``).
    """

    text: str
    source: str


def _warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr)


def iter_text(path: str | Path, block_bytes: int = _BLOCK_BYTES) -> Iterator[str]:
    """The text of a UTF-8 file in decoded blocks, read one block at a time.

    The file is sniffed (binary or not) before anything is yielded; a bad UTF-8 byte
    anywhere, or a file of nothing but whitespace, raises when the reader gets there.

    Raises:
        FoundryError: missing, a folder, binary, not UTF-8 (with the byte offset), or empty.
    """
    path = Path(path)
    if not path.exists():
        raise FoundryError(f"input not found: {path}")
    if not path.is_file():
        raise FoundryError(f"input is not a file: {path}")
    try:
        f = open(path, "rb")
    except OSError as e:
        raise FoundryError(f"cannot read {path}: {e.strerror}") from None
    decoder = codecs.getincrementaldecoder("utf-8")()
    fed = 0  # bytes given to the decoder so far
    first, has_text = True, False
    with f:
        while True:
            try:
                raw = f.read(block_bytes)
            except OSError as e:
                raise FoundryError(f"cannot read {path}: {e.strerror}") from None
            if first and b"\x00" in raw[:_SNIFF_BYTES]:
                raise FoundryError(f"input looks binary, not text: {path}")
            held = len(decoder.getstate()[0])  # the start of a character cut by the last block
            try:
                text = decoder.decode(raw, final=not raw)
            except UnicodeDecodeError as e:
                raise FoundryError(f"input is not UTF-8 text (bad byte at offset {fed - held + e.start}): {path}") from None
            fed += len(raw)
            if first and text:
                text = text.removeprefix("\ufeff")  # a BOM is an encoding mark, not text
                first = False
            if text:
                has_text = has_text or not text.isspace()
                yield text
            if not raw:
                break
    if not has_text:
        raise FoundryError(f"input is empty: {path}")


def read_text_file(path: str | Path) -> str:
    """Read a whole UTF-8 text file, or raise a one-line :class:`FoundryError`.

    Raises:
        FoundryError: missing, a folder, binary, not UTF-8, or empty.
    """
    return "".join(iter_text(path))


def _lines(blocks: Iterable[str]) -> Iterator[str]:
    # Lines end at "\n" ("\r\n" leaves a "\r" that JSON reads as whitespace). A long line
    # is gathered as a list of parts, so joining it costs its length once, not per block.
    pending: list[str] = []
    for block in blocks:
        lines = block.split("\n")
        if len(lines) == 1:
            pending.append(block)
            continue
        pending.append(lines[0])
        yield "".join(pending)
        yield from lines[1:-1]
        pending = [lines[-1]]
    tail = "".join(pending)
    if tail:
        yield tail


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, object]]:
    """``(line number, parsed value)`` for each non-blank line of a ``.jsonl`` file, streamed.

    The one reader of JSON-lines files (documents, conversations, eval sets), so every
    one reports a bad line the same way.

    Raises:
        FoundryError: what :func:`iter_text` raises, or ``FILE:LINE: not valid JSON``.
    """
    path = Path(path)
    for lineno, line in enumerate(_lines(iter_text(path)), 1):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as e:
            raise FoundryError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
        # What the parser accepts but Python cannot hold: nesting past the recursion limit, an
        # integer of more than 4,300 digits (a ValueError of its own).
        except RecursionError:
            raise FoundryError(f"{path}:{lineno}: not valid JSON here (nested too deeply)") from None
        except ValueError:
            raise FoundryError(f"{path}:{lineno}: not valid JSON here (a number too long to read)") from None


def _jsonl_texts(path: Path) -> Iterator[str]:
    found = False
    for lineno, obj in iter_jsonl(path):
        text = None
        if isinstance(obj, dict):
            text = next((obj[k] for k in JSONL_TEXT_KEYS if isinstance(obj.get(k), str)), None)
        elif isinstance(obj, str):
            text = obj
        if text is None:
            raise FoundryError(f"{path}:{lineno}: expected a JSON object with a \"text\" string field")
        if text.strip():
            found = True
            yield text
    if not found:
        raise FoundryError(f"input has no non-empty \"text\" records: {path}")


# ----------------------------------------------------------------------------- pieces
# A document longer than PIECE_CHARS is tokenized in pieces. Where possible a piece ends
# just before a line that starts with a non-space character after a non-space one (or,
# failing that, before a single space between two words): the byte-level BPE splits text
# into words at exactly such places, so the pieces encode to the same ids as the whole.


def _cut(text: str, start: int, limit: int) -> int:
    lo = start + (limit - start) // 2
    for sep, after in (("\n", 1), (" ", 0)):
        i = text.rfind(sep, lo, limit)
        while i > lo:
            if not text[i - 1].isspace() and i + 1 < len(text) and not text[i + 1].isspace():
                return i + after
            i = text.rfind(sep, lo, i)
    return limit


def split_pieces(blocks: Iterable[str], max_chars: int = PIECE_CHARS) -> Iterator[str]:
    """Re-cut a stream of text into pieces of at most ``max_chars`` characters (see above)."""
    buf = ""
    for block in blocks:
        buf = buf + block if buf else block
        start = 0  # (an offset, not re-slicing: one huge block is cut in linear time)
        while len(buf) - start > max_chars:
            cut = _cut(buf, start, start + max_chars)
            yield buf[start:cut]
            start = cut
        buf = buf[start:]
    if buf:
        yield buf


def _one_document(pieces: Iterable[str]) -> Iterator[tuple[bool, str]]:
    return ((k == 0, piece) for k, piece in enumerate(pieces))


def _file_pieces(path: Path) -> Iterator[tuple[bool, str]]:
    if path.suffix.lower() == ".jsonl":
        for text in _jsonl_texts(path):
            yield from _one_document(split_pieces((text,)))
    else:
        yield from _one_document(split_pieces(iter_text(path)))


def _text_pieces(text: str) -> Iterator[tuple[bool, str]]:
    # An empty document still counts (and gets its end-of-document token).
    return _one_document(split_pieces((text,)) if text else ("",))


# ----------------------------------------------------------------------------- corpus


@dataclass
class Unit:
    """What is read, and kept or skipped, as a whole: one file, or one in-memory document.

    Attributes:
        source: the file path (or the document's source).
        strict: a named input (a bad one is an error) rather than a file found in a folder
            (a bad one is skipped with a warning).
        read: ``(starts a new document, piece)`` for each piece, in order.
        folder: the folder input it was found in, if any.
    """

    source: str
    strict: bool
    read: Callable[[], Iterator[tuple[bool, str]]]
    folder: str | None = None


@dataclass
class Corpus:
    """The documents of some inputs, read lazily and as often as needed.

    A file is strict (a bad file is an error); inside a folder, every non-hidden file
    is read recursively in sorted order, and binary, non-UTF-8 and empty files are
    skipped with a warning (once: :meth:`visit` drops them), a folder with nothing
    usable being an error.
    """

    units: list[Unit] = field(default_factory=list)

    @classmethod
    def from_inputs(cls, inputs: Iterable[str | Path]) -> "Corpus":
        """A corpus of files, folders and ``.jsonl`` files (nothing is read yet)."""
        inputs = list(inputs)
        if not inputs:
            raise FoundryError("no input given")
        units = []
        for item in inputs:
            path = Path(item)
            if path.is_dir():
                files = sorted(p for p in path.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts))
                units += [Unit(str(f), False, lambda f=f: _file_pieces(f), str(path)) for f in files]
                if not files:
                    raise FoundryError(f"folder has no readable text files: {path}")
            else:
                units.append(Unit(str(path), True, lambda path=path: _file_pieces(path)))
        return cls(units)

    @classmethod
    def from_documents(cls, docs: Iterable[Document]) -> "Corpus":
        """A corpus of documents already in memory."""
        return cls([Unit(d.source, True, lambda d=d: _text_pieces(d.text)) for d in docs])

    def visit(self, reader: Callable[[Unit], object]) -> None:
        """Call ``reader(unit)`` on every unit; a folder's file whose reading raises a
        :class:`FoundryError` is warned about and dropped from the corpus.

        ``reader`` must only commit what it read once the unit is read to the end.
        """
        kept, seen_folders, used_folders = [], set(), set()
        for unit in self.units:
            seen_folders.add(unit.folder)
            try:
                reader(unit)
            except FoundryError as e:
                if unit.strict:
                    raise
                _warn(f"skipped: {e}")
                continue
            kept.append(unit)
            used_folders.add(unit.folder)
        self.units = kept
        for folder in sorted(f for f in seen_folders - used_folders if f is not None):
            raise FoundryError(f"folder has no readable text files: {folder}")

    def pieces(self) -> Iterator[tuple[bool, str]]:
        """``(starts a new document, piece)`` over the whole corpus, in order."""
        for unit in self.units:
            yield from unit.read()


def documents_of(pieces: Iterable[tuple[bool, str]], source: str) -> list[Document]:
    """Join pieces back into whole documents."""
    docs: list[Document] = []
    parts: list[str] = []
    for new, piece in pieces:
        if new and parts:
            docs.append(Document("".join(parts), source))
            parts = []
        parts.append(piece)
    if parts:
        docs.append(Document("".join(parts), source))
    return docs


def read_documents(inputs: Iterable[str | Path]) -> list[Document]:
    """Read every input into memory (see :class:`Corpus` for the rules).

    ``foundry prepare`` streams a :class:`Corpus` instead; this is for corpora that fit
    in memory and callers that want the documents themselves.
    """
    corpus = Corpus.from_inputs(inputs)
    docs: list[Document] = []

    def read(unit: Unit) -> None:
        docs.extend(documents_of(unit.read(), unit.source))  # all or nothing: a bad file raises first

    corpus.visit(read)
    return docs


def builtin_corpus() -> list[Document]:
    """Python's own reference documentation (``pydoc_data.topics``), ~460 KB of English.

    Every CPython install carries it, so the demo needs no download and no data folder.
    """
    try:
        from pydoc_data.topics import topics
    except ImportError:  # pragma: no cover - stripped-down Python builds
        raise FoundryError("this Python has no pydoc_data; pass your own text with --text") from None
    return [Document(text, "pydoc_data.topics") for _, text in sorted(topics.items()) if text.strip()]
