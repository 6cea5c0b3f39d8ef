"""The lock of a state folder: one process at a time may change it.

Used by every command that keeps state in a folder it changes over time
(``foundry online``, ``foundry evolve --mode train|evolve``). The lock file holds the
holder's pid and command, so a second process is told who is in the way.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import FoundryError

LOCK_FILE = "lock"


class StateLock:
    """Keeps a second process out of a state folder until :meth:`release` (or exit).

    The lock is the OS's where it has one, so it dies with its process: ``fcntl.flock``
    (Linux, macOS), else ``msvcrt.locking`` (Windows). Elsewhere a lock file created
    with ``O_EXCL`` holds the owner's pid; a lock left by a process that no longer runs
    is taken over. (That fallback cannot tell a reused pid from its owner; the error
    names the file to delete in that case.)

    Args:
        state: the state folder (it must exist).
        kind: ``"fcntl"``, ``"msvcrt"`` or ``"pidfile"``; default the first available.
        command: what holds the folder, named in a second process's error
            (default ``foundry online``, the first user of this lock).

    Raises:
        FoundryError: another process holds the folder (one line, naming its command and pid).
    """

    def __init__(self, state: Path, kind: str | None = None, command: str = "foundry online"):
        self.path = Path(state) / LOCK_FILE
        self.kind = kind or _lock_kind()
        self.command = command
        self._fd: int | None = None
        acquire = {"fcntl": self._acquire_fcntl, "msvcrt": self._acquire_msvcrt, "pidfile": self._acquire_pidfile}
        if self.kind not in acquire:
            raise ValueError(f"unknown lock kind {self.kind!r}")
        acquire[self.kind]()

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Let the next process in (the OS does this too when the process ends)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        if self.kind == "pidfile":
            os.close(fd)
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            return
        if self.kind == "msvcrt":
            import msvcrt

            try:
                os.lseek(fd, 0, os.SEEK_SET)
                msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
            except OSError:
                pass  # closing the file unlocks it as well
        os.close(fd)  # closing drops an flock

    def __enter__(self) -> "StateLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def _in_use(self) -> FoundryError:
        pid, command = _read_holder(self.path)
        owner = f" (pid {pid})" if pid is not None else ""
        hint = f"; if it is not running, delete {self.path}" if self.kind == "pidfile" else ""
        return FoundryError(f"{self.path.parent} is in use by another `{command or self.command}`{owner}{hint}")

    def _acquire_fcntl(self) -> None:
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise self._in_use() from None
        self._fd = fd
        self._write_holder(fd)

    def _acquire_msvcrt(self) -> None:
        import msvcrt

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            # Windows locks are mandatory: nobody else can read a locked byte, so no pid is written.
            os.lseek(fd, 0, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            os.close(fd)
            raise self._in_use() from None
        self._fd = fd

    def _acquire_pidfile(self) -> None:
        for _ in range(3):  # take over a stale lock, then try again
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                pid, _ = _read_holder(self.path)
                # No pid: a lock file of another kind left behind (or, for an instant, one
                # being written: a race this fallback accepts).
                if pid is not None and _pid_alive(pid):
                    raise self._in_use() from None
                try:
                    os.unlink(self.path)  # its owner is gone
                except FileNotFoundError:
                    pass
                continue
            self._fd = fd
            self._write_holder(fd)
            return
        raise self._in_use()

    def _write_holder(self, fd: int) -> None:
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"{os.getpid()}\n{self.command}\n".encode())


def _lock_kind() -> str:
    try:
        import fcntl  # noqa: F401
        return "fcntl"
    except ImportError:
        pass
    try:
        import msvcrt  # noqa: F401
        return "msvcrt"
    except ImportError:
        return "pidfile"


def _read_holder(path: Path) -> tuple[int | None, str | None]:
    """``(pid, command)`` from a lock file; None for what it does not hold (older files hold only the pid)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
        pid = int(lines[0].strip())
    except (OSError, ValueError, UnicodeDecodeError, IndexError):
        return None, None  # no file, a locked one, or one being written: no pid to name
    command = lines[1].strip() if len(lines) > 1 and lines[1].strip() else None
    return pid, command


def _pid_alive(pid: int) -> bool:
    if os.name == "nt":
        return True  # os.kill would end the process there; Windows uses msvcrt anyway
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # it exists, run by someone else
    return True
