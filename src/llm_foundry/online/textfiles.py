"""User text files for the online learner: check one completely, then iterate its lines.

``/load_txt`` and ``/train`` take any file a person names. :func:`check_text_file` reads
it through once (in chunks, so size costs no memory) and answers a bad one -- missing,
a folder, binary, not UTF-8, empty -- with a one-line error *before* anything is stored;
:func:`iter_text_lines` then yields the same non-blank lines for training.
"""

from __future__ import annotations

import codecs
import os
from pathlib import Path
from typing import Iterator

from ..utils.errors import FoundryError


def check_text_file(path: str | os.PathLike) -> int:
    """Check that ``path`` is a UTF-8 text file with text lines; returns how many (one-line errors).

    Reads in chunks, so a large file costs no memory; nothing is stored before it passes.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FoundryError(f"file not found: {path}")
    if path.is_dir():
        raise FoundryError(f"{path} is a folder; give a text file")
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    lines, pending, offset = 0, "", 0
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                if offset == 0 and b"\x00" in chunk[:8192]:
                    raise FoundryError(f"{path} looks binary, not text")
                try:
                    text = pending + decoder.decode(chunk)
                except UnicodeDecodeError as e:
                    raise FoundryError(f"{path} is not UTF-8 text (bad byte at offset {offset + e.start})") from None
                if offset == 0:
                    text = text.removeprefix("\ufeff")  # a BOM is no text
                offset += len(chunk)
                *full, pending = text.split("\n")
                lines += sum(1 for line in full if line.strip())
            try:
                pending += decoder.decode(b"", final=True)
            except UnicodeDecodeError:
                raise FoundryError(f"{path} is not UTF-8 text (it ends inside a character)") from None
    except OSError as e:
        raise FoundryError(f"cannot read {path}: {e.strerror}") from None
    lines += bool(pending.strip())
    if not lines:
        raise FoundryError(f"{path} has no text lines")
    return lines


def iter_text_lines(path: str | os.PathLike) -> Iterator[str]:
    """The non-blank lines of a UTF-8 text file (check it first with :func:`check_text_file`)."""
    with open(Path(path).expanduser(), encoding="utf-8-sig", newline="\n") as f:
        for line in f:
            line = line.rstrip("\r\n")
            if line.strip():
                yield line
