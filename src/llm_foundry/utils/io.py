"""Atomic writes: every file of state is written to a temp file, fsynced, then renamed;
a folder of files is replaced as one unit by :func:`replace_folder`.

A reader therefore sees either the old file (folder) or the new one, never half of
one, even if the process is killed mid-write.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

from .errors import FoundryError


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary file for data written in parts, that appears at ``path`` only when the ``with``
    block ends without an error (temp file in the same folder, fsynced, renamed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp makes owner-only files; give the usual permissions (0666 less the umask).
        if hasattr(os, "fchmod"):  # (not on Windows before Python 3.13)
            os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        # Leave the old file untouched and no temp litter behind.
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same folder + rename)."""
    with atomic_writer(path) as f:
        f.write(data)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    # Make the rename itself durable; not every platform allows opening a folder.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 text atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as pretty, UTF-8 JSON atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def atomic_torch_save(path: str | os.PathLike, obj: Any) -> None:
    """``torch.save`` into memory, then write the bytes atomically."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def read_json(path: str | os.PathLike, what: str = "file") -> Any:
    """Read a JSON file, turning every failure into a one-line :class:`FoundryError`."""
    path = Path(path)
    if not path.is_file():
        raise FoundryError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise FoundryError(f"{what} is not UTF-8 text: {path}") from None
    except json.JSONDecodeError as e:
        raise FoundryError(f"{what} is not valid JSON ({e.msg} at line {e.lineno}): {path}") from None


def read_log_records(path: str | os.PathLike) -> list[dict]:
    """The records of an append-only ``.jsonl`` log such as ``metrics.jsonl``.

    A missing file is an empty log; a line that does not parse (the torn last line of a
    process that was killed mid-write) is skipped, never an error.
    """
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            out.append(record)
    return out


# ----------------------------------------------------------------------------- folder swaps
# A folder of several files (a model folder, a checkpoint) is replaced as one unit:
#
#   1. ``fill`` writes the new folder as ``.NAME.tmp`` beside the target;
#   2. its files and the folder itself are fsynced, then it is renamed ``.NAME.new``
#      (so a ``.NAME.new`` is always complete, a ``.NAME.tmp`` never is);
#   3. ``.NAME.new`` and ``NAME`` are exchanged in one atomic step (Linux
#      ``renameat2(RENAME_EXCHANGE)``), or, where that is missing, ``NAME`` is renamed
#      ``.NAME.old`` and ``.NAME.new`` renamed ``NAME``;
#   4. what is left beside the target (the old folder) is deleted.
#
# A kill at any instant leaves ``NAME`` old or new and whole, or (only between the two
# renames of the fallback) no ``NAME`` but a complete ``.NAME.new``; :func:`recover_folder`
# finishes that swap and removes the leftovers.


def _aside(target: Path, tag: str) -> Path:
    return target.with_name(f".{target.name}.{tag}")


def fsync_tree(folder: str | os.PathLike) -> None:
    """fsync every file under ``folder`` and every folder in it, so a later rename publishes
    data that is on disk."""
    for root, _dirs, files in os.walk(folder):
        for name in files:
            # Windows flushes only through a handle that may write.
            fd = os.open(os.path.join(root, name), os.O_RDWR if os.name == "nt" else os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(root))


_renameat2 = None


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2`` with ``RENAME_EXCHANGE``); False where unsupported."""
    global _renameat2
    if _renameat2 is None:
        import ctypes
        import sys

        _renameat2 = False
        if sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                fn = libc.renameat2
                fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
                _renameat2 = fn
            except (OSError, AttributeError):
                pass
    if not _renameat2:
        return False
    at_fdcwd, rename_exchange = -100, 2
    return _renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def replace_folder(target: str | os.PathLike, fill: Callable[[Path], None]) -> Path:
    """Replace the folder ``target`` as a whole by what ``fill(folder)`` writes into a new folder.

    Readers (and a kill at any instant) see the old folder or the new one, never a mix;
    run :func:`recover_folder` on start-up to finish a swap a kill interrupted.

    Args:
        target: the folder to replace (need not exist yet).
        fill: writes the new folder's contents into the (existing, empty) folder it is given.

    Returns:
        ``target``.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover_folder(target)
    tmp, new, old = _aside(target, "tmp"), _aside(target, "new"), _aside(target, "old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    fill(tmp)
    fsync_tree(tmp)
    os.replace(tmp, new)  # from here on the new folder is complete
    _fsync_dir(target.parent)
    if not target.exists():
        os.replace(new, target)
    elif _exchange(new, target):
        shutil.rmtree(new)  # the old folder, now under the new one's name
    else:
        os.replace(target, old)
        os.replace(new, target)
        shutil.rmtree(old)
    _fsync_dir(target.parent)
    return target


def recover_folder(target: str | os.PathLike, is_complete: Callable[[Path], bool] | None = None) -> Path | None:
    """Finish or roll back a :func:`replace_folder` that a kill interrupted, and tidy up (idempotent).

    Args:
        target: the folder.
        is_complete: a stricter test of a ``.NAME.new`` left by older versions, which wrote it
            in place (this version only names a complete folder so).

    Returns:
        ``target`` if it now exists, else None.
    """
    target = Path(target)
    tmp, new, old = _aside(target, "tmp"), _aside(target, "new"), _aside(target, "old")
    if not target.exists():
        if new.is_dir() and (is_complete is None or is_complete(new)):
            os.replace(new, target)
        elif old.is_dir():
            os.replace(old, target)
    if target.exists():
        # Whatever is beside a present target is a half-written, an uncommitted or an old folder.
        for leftover in (tmp, new, old):
            shutil.rmtree(leftover, ignore_errors=True)
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return target if target.exists() else None
