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
import secrets
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
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same folder + rename)."""
    with atomic_writer(path) as f:
        f.write(data)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_dir(folder: Path) -> None:
    """fsync ``folder`` itself, so a rename or a new file in it survives a power cut (a no-op where
    the platform cannot open a folder)."""
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
    except (ValueError, RecursionError) as e:  # an integer past Python's 4,300-digit limit; nesting too deep
        raise FoundryError(f"{what} is not valid JSON ({str(e).split(':')[0].split(';')[0]}): {path}") from None


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


def append_records(path: str | os.PathLike, records: list[dict]) -> int:
    """Append ``records`` to a ``.jsonl`` log, one JSON object a line, and fsync them.

    A process killed mid-append leaves a torn last line (no ``\\n``). Appending after it
    would glue the next record onto it and lose both, so the torn tail is cut off first
    (or, if it is a whole record that only lacks its ``\\n``, the ``\\n`` is added).

    Returns:
        how many bytes of a torn record were dropped (0 if none), for the caller to report.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
    with open(path, "a+b") as f:
        dropped = _repair_tail(f)
        f.seek(0, os.SEEK_END)
        f.write(data)  # a buffered write retries short writes until all is written (or raises)
        f.flush()
        os.fsync(f.fileno())
    return dropped


def _repair_tail(f) -> int:
    """Make the file ``f`` end at a line end; returns the bytes of a torn last line cut off."""
    size = f.seek(0, os.SEEK_END)
    if size == 0:
        return 0
    # Find the start of the last line, reading back in blocks (a line is one record, so this is short).
    start, block = size, 1 << 16
    while start > 0:
        begin = max(0, start - block)
        f.seek(begin)
        chunk = f.read(start - begin)
        if start == size and chunk.endswith(b"\n"):
            return 0  # ends at a line end: nothing torn
        cut = chunk.rfind(b"\n")
        if cut >= 0:
            start = begin + cut + 1
            break
        start = begin
    f.seek(start)
    tail = f.read()
    try:
        whole = isinstance(json.loads(tail), dict)
    except (json.JSONDecodeError, UnicodeDecodeError):
        whole = False
    if whole:  # the record was written, only its line end was not
        f.write(b"\n")
        return 0
    f.truncate(start)
    return len(tail)


# ----------------------------------------------------------------------------- folder swaps
# A folder of several files (a model folder, a checkpoint) is replaced as one unit:
#
#   1. ``fill`` writes the new folder as ``.NAME.foundry-tmp-<random>`` beside the target,
#      a folder marked as ours by a ``.foundry-swap`` file in it;
#   2. its files and the folder itself are fsynced, then it is renamed
#      ``.NAME.foundry-new-<random>`` (so a ``-new-`` folder is always complete, a
#      ``-tmp-`` one never is);
#   3. the new folder and ``NAME`` are exchanged in one atomic step (Linux
#      ``renameat2(RENAME_EXCHANGE)``), or, where that is missing, ``NAME`` is renamed
#      ``.NAME.foundry-old-<random>`` and the new folder renamed ``NAME`` (``NAME`` is
#      marked first, so the old folder carries the mark too);
#   4. what is left beside the target (the old folder) is deleted, and the mark in ``NAME``.
#
# A kill at any instant leaves ``NAME`` old or new and whole, or (only between the two
# renames of the fallback) no ``NAME`` but a complete new folder; :func:`recover_folder`
# finishes that swap and removes the leftovers. Only marked folders are ever removed or
# renamed: a folder beside the target that someone else named ``NAME.new`` or ``.NAME.old``
# is not ours to touch (``legacy=False``; by default the fixed names ``.NAME.tmp/.new/.old``
# of the versions before are still recovered, in folders whose neighbours are all ours).
SWAP_MARK = ".foundry-swap"


def _aside(target: Path, tag: str) -> Path:
    return target.with_name(f".{target.name}.{tag}")


def _rename(src: Path, dst: Path) -> None:
    """Rename, then fsync the folder it happened in, so the rename itself survives a power cut."""
    os.replace(src, dst)
    fsync_dir(dst.parent)


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
        fsync_dir(Path(root))


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


def _swap_folders(target: Path, stage: str = "") -> list[Path]:
    """The folders beside ``target`` named as this protocol's ``stage`` (tmp/new/old; "" = any)."""
    prefix = f".{target.name}.foundry-{stage}"
    try:
        return sorted(target.parent / n for n in os.listdir(target.parent) if n.startswith(prefix))
    except FileNotFoundError:
        return []


def _marked(target: Path, stage: str) -> list[Path]:
    """This protocol's ``stage`` folders beside ``target`` that carry our mark."""
    return [p for p in _swap_folders(target, f"{stage}-") if (p / SWAP_MARK).is_file()]


def _remove_swap_folder(folder: Path) -> None:
    """Delete one of the swap's own folders, its mark last: a kill midway leaves it marked or empty."""
    for child in folder.iterdir():
        if child.name == SWAP_MARK:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)
    shutil.rmtree(folder, ignore_errors=True)


def replace_folder(target: str | os.PathLike, fill: Callable[[Path], None], legacy: bool = True) -> Path:
    """Replace the folder ``target`` as a whole by what ``fill(folder)`` writes into a new folder.

    Readers (and a kill at any instant) see the old folder or the new one, never a mix;
    run :func:`recover_folder` on start-up to finish a swap a kill interrupted.

    Args:
        target: the folder to replace (need not exist yet).
        fill: writes the new folder's contents into the (existing, empty) folder it is given.
        legacy: also recover the fixed-name leftovers of older versions (see :func:`recover_folder`).

    Returns:
        ``target``.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover_folder(target, legacy=legacy)
    tag = secrets.token_hex(6)
    tmp, new, old = (target.with_name(f".{target.name}.foundry-{stage}-{tag}") for stage in ("tmp", "new", "old"))
    tmp.mkdir()
    try:
        (tmp / SWAP_MARK).write_bytes(b"")
        fill(tmp)
        fsync_tree(tmp)
    except BaseException:
        _remove_swap_folder(tmp)
        raise
    _rename(tmp, new)  # from here on the new folder is complete
    if not target.exists():
        _rename(new, target)
    else:
        (target / SWAP_MARK).write_bytes(b"")  # the old folder, once aside, is ours to delete
        if _exchange(new, target):
            fsync_dir(target.parent)
            _remove_swap_folder(new)  # the old folder, now under the new one's name
        else:
            _rename(target, old)
            _rename(new, target)
            _remove_swap_folder(old)
    (target / SWAP_MARK).unlink(missing_ok=True)
    fsync_dir(target.parent)
    return target


def recover_folder(target: str | os.PathLike, is_complete: Callable[[Path], bool] | None = None,
                   legacy: bool = True) -> Path | None:
    """Finish or roll back a :func:`replace_folder` that a kill interrupted, and tidy up (idempotent).

    Args:
        target: the folder.
        is_complete: a stricter test of a ``.NAME.new`` left by older versions, which wrote it
            in place (this version only names a complete folder so).
        legacy: also take or remove the fixed names ``.NAME.tmp/.new/.old`` of older versions.
            False where the folders beside ``target`` may be someone else's (a folder a user
            named): then only folders carrying this version's mark are touched.

    Returns:
        ``target`` if it now exists, else None.
    """
    target = Path(target)
    new_marked, old_marked = _marked(target, "new"), _marked(target, "old")
    fixed = [_aside(target, tag) for tag in ("tmp", "new", "old")] if legacy else []
    if not target.exists():
        if new_marked:
            _rename(new_marked[-1], target)
        elif old_marked:
            _rename(old_marked[-1], target)
        elif fixed and fixed[1].is_dir() and (is_complete is None or is_complete(fixed[1])):
            _rename(fixed[1], target)
        elif fixed and fixed[2].is_dir():
            _rename(fixed[2], target)
    leftovers = [*_marked(target, "tmp"), *_marked(target, "new"), *_marked(target, "old")]
    for leftover in _swap_folders(target):
        try:
            os.rmdir(leftover)  # an empty one: killed before its mark was written, or after it was removed
        except OSError:
            pass
    if target.exists():
        # Whatever is beside a present target is a half-written, an uncommitted or an old folder.
        for leftover in leftovers:
            _remove_swap_folder(leftover)
        for leftover in fixed:
            shutil.rmtree(leftover, ignore_errors=True)
        try:
            (target / SWAP_MARK).unlink(missing_ok=True)
        except OSError:
            pass  # a target that is not a folder: its owner reports that
    else:
        for leftover in _marked(target, "tmp"):
            _remove_swap_folder(leftover)
        for leftover in fixed[:1]:
            shutil.rmtree(leftover, ignore_errors=True)
    return target if target.exists() else None
