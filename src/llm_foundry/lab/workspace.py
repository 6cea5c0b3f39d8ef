"""The learner's workspace: the folder `foundry lab start N` writes and the learner edits.

    WORKSPACE/
      bpe.py            the learner's files: the stub at first (plain Python the tests import)
      tests/test_*.py   the module's visible tests, to read and to run with pytest by hand
      pytest.ini        so that `pytest` run there imports the learner's files
      .lab-built-on/    copies of the learner's files of earlier modules this module builds on
                        (refreshed at every start and test run; edit them in their own workspace)
      INTRO.md TASK.md  the introduction and the task, in the learner's language
      figures/          the figures the introduction shows

`start` never overwrites a learner file that exists (starting again, or revisiting, keeps the
work); `reset` moves the learner's files to ``.lab-backup/<time>/`` before writing the stubs.
A test run reads the learner's files without following links and copies them into a fresh run
folder; nothing in the workspace is ever run in place.
"""

from __future__ import annotations

import os
import shutil
import stat
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

from ..utils.errors import FoundryError
from ..utils.io import atomic_write_bytes, atomic_write_text
from .module import Module, earlier_references, find_module
from .text import say

MAX_FILE_BYTES = 1 << 20  # a learner file larger than this is not code they wrote by hand
BUILT_ON = ".lab-built-on"


def default_workspace(module: Module) -> Path:
    """``~/foundry-lab/NN_slug``: where `start` writes when ``--dir`` is not given."""
    return Path.home() / "foundry-lab" / module.name


def _check_folder(folder: Path) -> None:
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise FoundryError(f"the workspace {folder} is not a folder")


def write_workspace(module: Module, folder: Path, lang: str = "en") -> tuple[list[str], list[str]]:
    """Write module ``module``'s workspace in ``folder``.

    Returns:
        ``(written, kept)``: the learner files written as stubs, and those already there (kept).
    """
    _check_folder(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FoundryError(f"cannot create the workspace {folder}: {e.strerror}") from None
    written, kept = [], []
    for name in module.files:
        path = folder / name
        if path.exists() or path.is_symlink():
            kept.append(name)
        else:
            atomic_write_text(path, module.stub(name))
            written.append(name)
    for test in module.tests():
        atomic_write_bytes(folder / "tests" / test.name, test.read_bytes())
    if not (folder / "pytest.ini").exists():  # `pytest` by hand in the workspace imports the learner's files
        paths = ". " + BUILT_ON if module.builds_on else "."
        atomic_write_text(folder / "pytest.ini", f"[pytest]\npythonpath = {paths}\n")
    for kind in ("intro", "task"):
        atomic_write_text(folder / f"{kind.upper()}.md", module.text(kind, lang))
    for figure in sorted((module.path / "figures").glob("*")):  # INTRO.md links them as figures/NAME
        if figure.is_file():
            atomic_write_bytes(folder / "figures" / figure.name, figure.read_bytes())
    return written, kept


def read_learner_files(module: Module, folder: Path, lang: str = "en") -> dict[str, bytes]:
    """The learner's files of ``module`` in ``folder``, read without following links.

    Raises:
        FoundryError: a file is missing, a link, not a plain file, or too large.
    """
    if not folder.is_dir():
        raise FoundryError(say(lang, f"the workspace {folder} does not exist: run `foundry lab start {module.number}` "
                                     "(or give --dir)",
                               f"工作区 {folder} 不存在：先运行 `foundry lab start {module.number}`（或用 --dir 指定）"))
    out = {}
    for name in module.files:
        path = folder / name
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            raise FoundryError(say(lang, f"{path} is missing: `foundry lab start {module.number}` writes it again",
                                   f"{path} 不见了：`foundry lab start {module.number}` 会重新写出它")) from None
        except OSError as e:  # ELOOP: a link
            raise FoundryError(say(lang, f"{path} cannot be read ({e.strerror}); the lab reads only plain files, not links",
                                   f"无法读取 {path}（{e.strerror}）；实验室只读普通文件，不读链接")) from None
        with os.fdopen(fd, "rb") as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise FoundryError(say(lang, f"{path} is not a plain file", f"{path} 不是普通文件"))
            data = f.read(MAX_FILE_BYTES + 1)
        if len(data) > MAX_FILE_BYTES:
            raise FoundryError(say(lang, f"{path} is larger than {MAX_FILE_BYTES >> 20} MiB",
                                   f"{path} 超过 {MAX_FILE_BYTES >> 20} MiB"))
        out[name] = data
    return out


def built_on_files(module: Module, workspace_of: Callable[[int], Path | None],
                   lang: str = "en") -> tuple[dict[str, bytes | str], dict[str, str]]:
    """The learner's files of the earlier modules ``module`` builds on (its ``builds_on``).

    Each comes from that module's workspace (``workspace_of(number)``, else its default folder),
    read as :func:`read_learner_files` reads; where the learner has no readable file there (the
    module was skipped, or the folder is gone) the earlier module's reference stands in, so the
    chain of modules always runs.

    Returns:
        ``(files, sources)``: file name -> content, and file name -> where it came from (for the result).
    """
    references = earlier_references(module)
    files: dict[str, bytes | str] = {}
    sources: dict[str, str] = {}
    for number, name in module.builds_on:
        earlier = find_module(number, lang)
        folder = workspace_of(number) or default_workspace(earlier)
        try:
            files[name] = read_learner_files(replace(earlier, files=[name]), folder, lang)[name]
            sources[name] = say(lang, f"yours, from module {number} ({folder / name})",
                                f"你的，来自模块 {number}（{folder / name}）")
        except FoundryError:
            files[name] = references[name]
            sources[name] = say(lang, f"the reference of module {number} (you have no readable {name} in {folder})",
                                f"模块 {number} 的参考答案（{folder} 中没有可读的 {name}）")
    return files, sources


def copy_built_on(folder: Path, files: dict[str, bytes | str]) -> None:
    """Refresh the copies in ``folder/.lab-built-on/`` so that `pytest` by hand imports them too."""
    for name, data in files.items():
        atomic_write_bytes(folder / BUILT_ON / name, data.encode("utf-8") if isinstance(data, str) else data)


def restore_stubs(module: Module, folder: Path) -> Path | None:
    """Put the stubs back in ``folder``, moving the learner's files to ``.lab-backup/<time>/`` first.

    Returns:
        the backup folder, or None when there was nothing to keep.
    """
    _check_folder(folder)
    present = [n for n in module.files if (folder / n).exists() or (folder / n).is_symlink()]
    backup = None
    if present:
        backup = folder / ".lab-backup" / time.strftime("%Y%m%d-%H%M%S")
        while backup.exists():
            backup = backup.with_name(backup.name + "+")
        for name in present:
            (backup / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.move(folder / name, backup / name)
    for name in module.files:
        atomic_write_text(folder / name, module.stub(name))
    return backup


# ----------------------------------------------------------------------------- watching for saves
def signature(folder: Path, files: list[str]) -> tuple:
    """What changes when a learner file is saved (an editor may replace the file: the inode too)."""
    out = []
    for name in files:
        try:
            s = os.stat(folder / name, follow_symlinks=False)
            out.append((s.st_ino, s.st_size, s.st_mtime_ns))
        except OSError:
            out.append(None)
    return tuple(out)


def _inotify(folders: set[Path]) -> int | None:
    """An inotify descriptor watching ``folders`` for saves (Linux), or None where there is none."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
    except (OSError, AttributeError):
        return None
    if fd < 0:
        return None
    # close after writing, renamed into the folder (an editor's atomic save), created, deleted, modified
    mask = 0x8 | 0x80 | 0x100 | 0x200 | 0x2
    if not any(libc.inotify_add_watch(fd, os.fsencode(str(f)), mask) >= 0 for f in folders):
        os.close(fd)
        return None
    return fd


def wait_for_change(folder: Path, files: list[str], since: tuple | None = None, poll_s: float = 1.0,
                    settle_s: float = 0.2) -> None:
    """Return once one of the learner's ``files`` in ``folder`` differs from ``since`` (a
    :func:`signature` taken before the files were last read; default: now), so a save made while
    the tests ran is not missed.

    Save events (inotify) wake it at once; it also compares the files' signatures every ``poll_s``
    seconds, because some filesystems (network mounts, some containers' shared folders) send no
    events. A burst of writes (an editor saving in steps) is waited out for ``settle_s``.
    """
    import select

    before = signature(folder, files) if since is None else since
    fd = _inotify({(folder / f).parent for f in files})
    try:
        while True:
            if fd is not None:
                ready, _, _ = select.select([fd], [], [], poll_s)
                if ready:
                    try:
                        while os.read(fd, 65536):
                            pass
                    except BlockingIOError:
                        pass
            else:
                time.sleep(poll_s)
            now = signature(folder, files)
            if now != before:
                while True:  # settle: until the files stop changing
                    time.sleep(settle_s)
                    later = signature(folder, files)
                    if later == now:
                        return
                    now = later
    finally:
        if fd is not None:
            os.close(fd)
