"""Reading text: files, folders and ``.jsonl``, with one-line errors for bad input.

A *document* is the unit of the train/validation split: a whole file, one line of
a ``.jsonl`` file, or one topic of the built-in corpus.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from ..utils.errors import FoundryError

# A NUL byte in the first few KiB is how we tell binary files (images, archives,
# model weights) from text; no real text file contains one.
_SNIFF_BYTES = 8192
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


def read_text_file(path: str | Path) -> str:
    """Read a UTF-8 text file, or raise a one-line :class:`FoundryError`.

    Raises:
        FoundryError: missing, a folder, binary, not UTF-8, or empty.
    """
    path = Path(path)
    if not path.exists():
        raise FoundryError(f"input not found: {path}")
    if not path.is_file():
        raise FoundryError(f"input is not a file: {path}")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise FoundryError(f"cannot read {path}: {e.strerror}") from None
    if b"\x00" in raw[:_SNIFF_BYTES]:
        raise FoundryError(f"input looks binary, not text: {path}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise FoundryError(f"input is not UTF-8 text (bad byte at offset {e.start}): {path}") from None
    text = text.removeprefix("\ufeff")  # a BOM is an encoding mark, not text
    if not text.strip():
        raise FoundryError(f"input is empty: {path}")
    return text


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, object]]:
    """``(line number, parsed value)`` for each non-blank line of a ``.jsonl`` file.

    The one reader of JSON-lines files (documents, conversations, eval sets), so every
    one reports a bad line the same way.

    Raises:
        FoundryError: what :func:`read_text_file` raises, or ``FILE:LINE: not valid JSON``.
    """
    path = Path(path)
    for lineno, line in enumerate(read_text_file(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as e:
            raise FoundryError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None


def _read_jsonl(path: Path) -> list[Document]:
    docs = []
    for lineno, obj in iter_jsonl(path):
        text = None
        if isinstance(obj, dict):
            text = next((obj[k] for k in JSONL_TEXT_KEYS if isinstance(obj.get(k), str)), None)
        elif isinstance(obj, str):
            text = obj
        if text is None:
            raise FoundryError(f"{path}:{lineno}: expected a JSON object with a \"text\" string field")
        if text.strip():
            docs.append(Document(text, str(path)))
    if not docs:
        raise FoundryError(f"input has no non-empty \"text\" records: {path}")
    return docs


def _read_file(path: Path) -> list[Document]:
    if path.suffix.lower() == ".jsonl":
        return _read_jsonl(path)
    return [Document(read_text_file(path), str(path))]


def read_documents(inputs: Iterable[str | Path]) -> list[Document]:
    """Read every input: a file is strict (bad file = error), a folder is lenient.

    Inside a folder, every non-hidden file is read recursively in sorted order;
    binary, non-UTF-8 and empty files are skipped with a warning, and a folder with
    nothing usable is an error.
    """
    docs: list[Document] = []
    inputs = list(inputs)
    if not inputs:
        raise FoundryError("no input given")
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts))
            found = []
            for f in files:
                try:
                    found.extend(_read_file(f))
                except FoundryError as e:
                    _warn(f"skipped: {e}")
            if not found:
                raise FoundryError(f"folder has no readable text files: {path}")
            docs.extend(found)
        else:
            docs.extend(_read_file(path))
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
