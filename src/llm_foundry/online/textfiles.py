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


def check_text_file(path: str | os.PathLike, max_line_bytes: int | None = None) -> int:
    """Check that ``path`` is a UTF-8 text file with text lines; returns how many (one-line errors).

    One pass in chunks, in time and memory linear in the chunk, not the line: a file of
    one 100 MB line costs what a file of short lines does. Nothing is stored before it
    passes, so every check a later line could fail is made here -- including
    ``max_line_bytes`` (the replay store's record limit).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FoundryError(f"file not found: {path}")
    if path.is_dir():
        raise FoundryError(f"{path} is a folder; give a text file")
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    # Of the line being read, only what the count needs: has it text, how long is it.
    lines, offset, has_text, line_bytes, line_no = 0, 0, False, 0, 1
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                if offset == 0 and b"\x00" in chunk[:8192]:
                    raise FoundryError(f"{path} looks binary, not text")
                try:
                    text = decoder.decode(chunk)
                except UnicodeDecodeError as e:
                    raise FoundryError(f"{path} is not UTF-8 text (bad byte at offset {offset + e.start})") from None
                if offset == 0:
                    text = text.removeprefix("\ufeff")  # a BOM is no text
                offset += len(chunk)
                pieces = text.split("\n")
                for k, piece in enumerate(pieces):
                    if k:  # a line ended before this piece
                        lines += has_text
                        has_text, line_bytes, line_no = False, 0, line_no + 1
                    has_text = has_text or not piece.isspace() and piece != ""
                    line_bytes += len(piece.encode("utf-8")) if max_line_bytes is not None else 0
                    if max_line_bytes is not None and line_bytes > max_line_bytes:
                        raise FoundryError(f"{path}: line {line_no} is longer than {max_line_bytes} bytes "
                                           "(split it into lines)")
            try:
                decoder.decode(b"", final=True)
            except UnicodeDecodeError:
                raise FoundryError(f"{path} is not UTF-8 text (it ends inside a character)") from None
    except OSError as e:
        raise FoundryError(f"cannot read {path}: {e.strerror or e}") from None
    lines += has_text
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
