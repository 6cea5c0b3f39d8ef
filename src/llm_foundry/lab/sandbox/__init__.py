"""Running learner code in a sandbox: the one interface the Lab calls.

    result = run(SandboxSpec(argv=[sys.executable, "-m", "pytest", ...], workspace=ws))

Learner code never runs in the lab's own process. ``run`` starts a launcher (``launch.py``) that
applies the layers below and then execs the command; at the end every process of the run is
killed, however it tried to hide, and ``SandboxResult.layers`` says which layers were on and which
were off (and why), so every result can show a degraded mode.

The layers (probed once at start-up by :func:`probe`; see docs/en/lab-sandbox.md):

==========  ======================================================================================
session     a new session and process group (no controlling terminal), killed as a group
rlimits     CPU seconds, address space, file size, descriptors, no core files; processes per uid
uid         (root) a dedicated unprivileged uid/gid per run, no supplementary groups; the
            workspace is lent to it for the run
cgroup      (root) memory, process and CPU-quota limits; the kill at the end goes through it
bubblewrap  new namespaces (no network but loopback, own pids, ipc, uts), a read-only system and
            Python environment, the workspace the one writable folder, private /tmp, /proc, /dev;
            hidden paths replaced by empty ones
seccomp     no sockets but AF_UNIX, no ptrace/mount/bpf/keyctl/unshare/perf/TIOCSTI ...
landlock    writes only to the workspace and the run's /tmp, reads only the system, the
            environment and the workspace, no TCP, no signals out of the sandbox
==========  ======================================================================================
"""

from __future__ import annotations

import ctypes.util
import fcntl
import functools
import json
import os
import select
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable
from pathlib import Path

from ...utils.errors import FoundryError
from . import cgroup as cgroups
from .launch import landlock_abi

# Every layer a result reports, in the order they are applied.
LAYERS = ("session", "rlimits", "uid", "cgroup", "bubblewrap", "seccomp", "landlock")

LAUNCHER = Path(__file__).with_name("launch.py")
PACKAGE = Path(__file__).resolve().parents[2]  # llm_foundry/, readable inside (the launcher lives in it)
# Each run gets its own uid (and gid) from this range, so that one run can neither signal nor read
# another's processes and "every process of the uid" means exactly this run's. Far above the
# ranges of people, of systemd's dynamic users (61184-65519) and of the usual subuid ranges.
UID_BASE, UID_SLOTS = 1_900_000_000, 1024
UID_LOCKS = Path("/run/foundry-lab") if Path("/run").is_dir() else Path(tempfile.gettempdir()) / "foundry-lab"
# The system folders every sandbox reads (the ones that are links, as /bin -> usr/bin, stay links).
SYSTEM_PATHS = ("/usr", "/etc", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")


@dataclass(frozen=True)
class Limits:
    """Resource limits of one sandboxed run.

    Attributes:
        wall_s: wall-clock limit; every process of the run is killed after it.
        cpu_s: CPU seconds of each process (RLIMIT_CPU).
        memory_bytes: memory of the whole run (cgroup) and address space of each process (RLIMIT_AS:
            this much without the cgroup, twice as much with it, where the cgroup is the real limit).
        processes: processes and threads the run may have at once (cgroup pids.max; RLIMIT_NPROC of
            the run's own uid).
        cpus: CPU quota of the whole run, in CPUs (cgroup).
        output_bytes: bytes of stdout and of stderr kept (the rest is read and dropped); past eight
            times as much the run is killed (outcome ``output``).
        file_bytes: the largest file it may write (RLIMIT_FSIZE).
        tmp_bytes: the size of its private /tmp (a tmpfs, with bubblewrap).
        open_files: descriptors (RLIMIT_NOFILE).
    """

    wall_s: float = 60.0
    cpu_s: int = 120
    memory_bytes: int = 2 << 30
    processes: int = 64
    cpus: float = 1.0
    output_bytes: int = 1 << 20
    file_bytes: int = 64 << 20
    tmp_bytes: int = 64 << 20
    open_files: int = 256


@dataclass(frozen=True)
class SandboxSpec:
    """What to run and what it may see.

    Attributes:
        argv: the command (``argv[0]`` an absolute path).
        workspace: the one writable folder; the command's working directory.
        readonly: other paths the command needs to read (the Python environment and this package
            are always readable).
        hidden: paths that must not be readable from inside (reference answers, the progress database).
        env: the whole environment of the command (nothing is inherited).
        limits: resource limits.
    """

    argv: list[str]
    workspace: Path
    readonly: tuple[Path, ...] = ()
    hidden: tuple[Path, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    limits: Limits = Limits()


@dataclass
class SandboxResult:
    """How a run ended.

    Attributes:
        outcome: ``exited``, ``timeout`` (wall clock), ``cpu`` (CPU limit), ``memory`` (killed by the
            memory limit), ``output`` (killed for printing past the hard cap), ``killed`` (another
            signal) or ``sandbox`` (the sandbox itself could not start the command: ``error`` says why).
        returncode: the exit status (negative: the signal), None when it never ended by itself.
        stdout, stderr: what it printed, each cut at ``limits.output_bytes`` (``truncated`` says so).
        duration_s: wall-clock seconds.
        layers: every layer of :data:`LAYERS` -> ``"on"`` or ``"off: <why>"``.
        truncated: some output was dropped.
        error: why the sandbox could not start the command (outcome ``sandbox``), else "".
        uid: the uid the run had (None: the lab's own).
        cgroup: the run's cgroup folder (removed at the end), None without the cgroup layer.
        leftover: processes of the run still found after the final kill (0 unless something is wrong).
    """

    outcome: str
    returncode: int | None
    stdout: str
    stderr: str
    duration_s: float
    layers: dict[str, str]
    truncated: bool = False
    error: str = ""
    uid: int | None = None
    cgroup: str | None = None
    leftover: int = 0

    @property
    def degraded(self) -> bool:
        """Some protection layer was off."""
        return any(v != "on" for v in self.layers.values())


# ---------------------------------------------------------------- probing

@functools.lru_cache(maxsize=1)
def _probe() -> tuple[tuple[str, str], ...]:
    root = os.geteuid() == 0
    state = {"session": "on", "rlimits": "on"}
    state["uid"] = _trial({"uid": UID_BASE, "gid": UID_BASE}) if root else \
        "off: the lab is not running as root, so learner code runs as your own user"
    state["cgroup"] = _probe_cgroup(root)
    state["bubblewrap"] = _probe_bwrap(root)
    state["seccomp"] = _probe_seccomp()
    abi = landlock_abi()
    state["landlock"] = "on" if abi >= 1 else "off: this kernel has no Landlock (Linux 5.13+ with lsm=landlock)"
    # a container may refuse what the kernel has (a uid outside its map, a filter of its own): try each once
    if state["seccomp"] == "on":
        state["seccomp"] = _trial({"seccomp": True})
    if state["landlock"] == "on":
        state["landlock"] = _trial({"landlock": {"read": ["/"], "write": [], "hidden": []}})
    return tuple(state.items())


def _trial(layer: dict) -> str:
    """Apply one layer in the launcher, which then runs ``/bin/true``: "on", or "off: <the launcher's message>"."""
    report_r, report_w = os.pipe()
    config = {"argv": ["/bin/true"], "env": {}, "cwd": "/", "report_fd": report_w, **layer}
    try:
        done = subprocess.run([sys.executable, "-I", "-S", str(LAUNCHER), "inner", json.dumps(config)],
                              capture_output=True, timeout=20, pass_fds=(report_w,), cwd="/")
        ok = done.returncode == 0
    except (OSError, subprocess.TimeoutExpired) as e:
        ok, done = False, e
    finally:
        os.close(report_w)
    with os.fdopen(report_r, "rb") as f:
        why = f.read(4096).decode("utf-8", "replace").lstrip("+").strip()
    return "on" if ok else f"off: it cannot be applied here ({why or done})"


def probe() -> dict[str, str]:
    """Which layers this machine can apply (``"on"``) and which not (``"off: <why>"``); probed once."""
    return dict(_probe())


def _probe_cgroup(root: bool) -> str:
    try:
        ver = cgroups.version()
    except OSError as e:
        return f"off: cannot read the cgroup mounts ({e})"
    if ver is None:
        return "off: no cgroup hierarchy with the memory, pids and cpu controllers"
    if not root:
        return "off: making cgroups needs root"
    try:
        cgroups.create(ver, 64 << 20, 8, 1.0).remove()
    except OSError as e:
        return f"off: cannot make a cgroup under {cgroups.ROOT} ({e.strerror or e})"
    return "on"


def _probe_bwrap(root: bool) -> str:
    exe = shutil.which("bwrap")
    if exe is None:
        return "off: bubblewrap is not installed (apt-get install bubblewrap)"
    argv = _bwrap_base(exe, root, drop_uid=root) + ["--ro-bind", "/", "/", "--", "/bin/true"]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"off: bubblewrap does not start ({e})"
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or ["no message"])[-1]
        return f"off: bubblewrap cannot make its namespaces here ({why}); user namespaces may be disabled"
    return "on"


def _probe_seccomp() -> str:
    try:
        with open("/proc/self/status") as f:
            if "Seccomp:" not in f.read():
                return "off: this kernel has no seccomp"
    except OSError:
        return "off: cannot read /proc/self/status"
    if ctypes.util.find_library("seccomp") is None:
        return "off: libseccomp is not installed (apt-get install libseccomp2)"
    return "on"


# ---------------------------------------------------------------- the layers' settings

def _bwrap_base(exe: str, root: bool, drop_uid: bool) -> list[str]:
    """The namespaces and session of bubblewrap. As root no user namespace (it would map only uid 0,
    and the launcher could not drop to the run's uid inside) and no capabilities but the two the
    launcher needs for that drop; unprivileged, ``--unshare-all`` with its user namespace."""
    argv = [exe, "--new-session", "--die-with-parent"]
    if not root:
        return argv + ["--unshare-all"]
    argv += ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try",
             "--cap-drop", "ALL"]
    return argv + (["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"] if drop_uid else [])


def _python_paths() -> list[str]:
    """The interpreter and its environment (a virtual environment links to its base Python)."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
             os.path.dirname(os.path.realpath(sys.executable))}
    return sorted(os.path.realpath(p) for p in paths) + sorted(paths)


def _bwrap_argv(exe: str, spec: SandboxSpec, readable: list[str], root: bool, drop_uid: bool) -> list[str]:
    argv = _bwrap_base(exe, root, drop_uid)
    for path in SYSTEM_PATHS:
        if os.path.islink(path):
            argv += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            argv += ["--ro-bind", path, path]
    argv += ["--proc", "/proc", "--dev", "/dev",
             "--size", str(spec.limits.tmp_bytes), "--perms", "1777", "--tmpfs", "/tmp"]
    ws = str(spec.workspace)
    # bubblewrap makes the folders above a bind 0700 as root: open them, or the run's uid cannot pass
    made = set()
    for path in readable + [ws]:
        for parent in reversed(Path(path).parents[:-1]):
            if str(parent) not in made and not str(parent).startswith(SYSTEM_PATHS) and parent != Path("/tmp"):
                argv += ["--perms", "0755", "--dir", str(parent)]
                made.add(str(parent))
    for path in readable:  # after /tmp, so a readable folder under /tmp shows through
        argv += ["--ro-bind-try", path, path]
    argv += ["--bind", ws, ws]
    for path in map(str, spec.hidden):  # last: they cover what the binds above showed
        if os.path.isdir(path):
            argv += ["--perms", "0000", "--tmpfs", path]
        elif os.path.lexists(path):
            argv += ["--ro-bind", "/dev/null", path]
    return argv + ["--"]  # the launcher changes to the workspace once it has the run's uid


def _rlimits(lim: Limits, uid_on: bool, cgroup_on: bool) -> dict[str, int]:
    limits = {"cpu": lim.cpu_s, "as": lim.memory_bytes * (2 if cgroup_on else 1), "fsize": lim.file_bytes,
              "nofile": lim.open_files, "core": 0}
    if uid_on:  # RLIMIT_NPROC counts every process of the uid: only meaningful for the run's own uid
        limits["nproc"] = lim.processes
    return limits


class _UidSlot:
    """A uid of the range, held (by an flock on its lock file) for one run."""

    def __init__(self) -> None:
        UID_LOCKS.mkdir(mode=0o700, parents=True, exist_ok=True)
        start = os.getpid() % UID_SLOTS  # concurrent labs start at different slots
        for i in range(UID_SLOTS):
            slot = (start + i) % UID_SLOTS
            fd = os.open(UID_LOCKS / f"uid-{slot}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            self.fd, self.uid = fd, UID_BASE + slot
            return
        raise FoundryError(f"all {UID_SLOTS} sandbox uids are in use")

    def release(self) -> None:
        os.close(self.fd)


def _chown_tree(top: Path, uid: int, gid: int, lend: bool) -> None:
    """Give ``top`` and everything in it to ``uid``, never following a link.

    When lending (``lend``), a file with a second name (a hard link) is kept: its other name may be
    outside the workspace, and chown would hand that file to the run too.
    """
    os.lchown(top, uid, gid)
    for folder, dirs, files in os.walk(top):
        for name in dirs + files:
            path = os.path.join(folder, name)
            try:
                st = os.lstat(path)
                if not (lend and not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1):
                    os.lchown(path, uid, gid)
            except FileNotFoundError:
                pass


def _process_table() -> dict[int, dict[str, str]]:
    """Every live (not zombie) process -> the fields of its ``/proc/PID/status``."""
    table = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/status") as f:
                fields = {k: v.strip() for k, _, v in (line.partition(":") for line in f)}
        except OSError:
            continue
        if not fields.get("State", "").startswith("Z"):  # a zombie is dead already, waiting to be reaped
            table[int(entry.name)] = fields
    return table


def _processes(match: Callable[[int, dict[str, str]], bool]) -> list[int]:
    """The live processes for which ``match(pid, fields of /proc/PID/status)`` holds."""
    return [pid for pid, fields in _process_table().items() if match(pid, fields)]


def _uid_processes(uid: int) -> list[int]:
    """The processes whose real or effective uid is ``uid``."""
    return _processes(lambda pid, fields: str(uid) in fields.get("Uid", "").split()[:2])


def _pid_namespace(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


def _process_tree(top: int) -> list[int]:
    """The live processes below ``top`` (by parent pid), as they are now."""
    children: dict[int, list[int]] = {}
    for pid, fields in _process_table().items():
        children.setdefault(int(fields.get("PPid") or 0), []).append(pid)
    tree, todo = [], list(children.get(top, []))
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children.get(pid, [])
    return tree


def _pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except OSError:  # ended meanwhile
        return None


def _kill_until_gone(find: Callable[[], list[int]], timeout: float = 10.0) -> int:
    """SIGKILL what ``find`` returns until it returns nothing; the number still there after ``timeout``."""
    deadline = time.monotonic() + timeout
    while (pids := find()) and time.monotonic() < deadline:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.01)
    return len(find())


# ---------------------------------------------------------------- running

OFF_VAR = "FOUNDRY_LAB_SANDBOX_OFF"
"""Comma-separated layers to leave off (e.g. ``bubblewrap`` in a container that breaks it); every
result then shows the degraded mode, as for a layer this machine lacks."""


def layer_state(layers: set[str] | None = None) -> dict[str, str]:
    """The layers a run would apply: :func:`probe`'s, less those ``$FOUNDRY_LAB_SANDBOX_OFF`` names
    (when ``layers`` is None) or those not in ``layers``; each ``"on"`` or ``"off: <why>"``.

    Raises:
        FoundryError: ``$FOUNDRY_LAB_SANDBOX_OFF`` names a layer that does not exist.
    """
    state = probe()
    if layers is None and os.environ.get(OFF_VAR, "").strip():
        off = {name.strip() for name in os.environ[OFF_VAR].split(",") if name.strip()}
        if off - set(LAYERS):
            raise FoundryError(f"{OFF_VAR} names unknown sandbox layers {sorted(off - set(LAYERS))} "
                               f"(the layers: {', '.join(LAYERS)})")
        layers = set(LAYERS) - off
    if layers is not None:
        state = {k: (v if k in layers or v != "on" else "off: disabled by the caller") for k, v in state.items()}
    return state


def run(spec: SandboxSpec, layers: set[str] | None = None,
        on_output: Callable[[str, bytes], None] | None = None) -> SandboxResult:
    """Run ``spec`` with every available layer (or only those in ``layers``, to test a degraded mode;
    with ``layers`` None, those that ``$FOUNDRY_LAB_SANDBOX_OFF`` does not name). ``on_output``,
    when given, is called with ``("stdout" | "stderr", bytes)`` for each piece of output kept, as it
    comes (the web lab streams it).

    The lab's own process is never limited: only the launcher and what it starts join the run's
    cgroup, take its uid and get its rlimits.

    Raises:
        FoundryError: the workspace is not a folder, or ``argv`` is empty or not absolute.
    """
    if not spec.argv or not os.path.isabs(spec.argv[0]):
        raise FoundryError(f"the sandbox needs a command with an absolute path, got {spec.argv!r}")
    ws = Path(os.path.realpath(spec.workspace))
    if not ws.is_dir():
        raise FoundryError(f"the sandbox's workspace is not a folder: {spec.workspace}")
    spec = SandboxSpec(spec.argv, ws, spec.readonly, spec.hidden, spec.env, spec.limits)
    state = layer_state(layers)
    on = {k for k, v in state.items() if v == "on"}
    root = os.geteuid() == 0
    lim = spec.limits

    slot = _UidSlot() if "uid" in on else None
    group, tmp, owner = None, None, os.lstat(ws)
    try:
        if "cgroup" in on:
            group = cgroups.create(cgroups.version(), lim.memory_bytes, lim.processes, lim.cpus)
        if slot:
            _chown_tree(ws, slot.uid, slot.uid, lend=True)
        if "bubblewrap" not in on:  # the run's own /tmp (bubblewrap gives it a tmpfs instead)
            tmp = Path(tempfile.mkdtemp(prefix="foundry-lab-tmp-"))
            if slot:
                os.chown(tmp, slot.uid, slot.uid)
        result = _launch(spec, state, on, root, slot.uid if slot else None, group, tmp, on_output)
    finally:
        if group:
            group.remove()
        if slot:
            _chown_tree(ws, owner.st_uid, owner.st_gid, lend=False)
            slot.release()
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    return result


def _launch(spec: SandboxSpec, state: dict[str, str], on: set[str], root: bool, uid: int | None,
            group: cgroups.RunCgroup | None, tmp: Path | None,
            on_output: Callable[[str, bytes], None] | None = None) -> SandboxResult:
    lim = spec.limits
    readable = [str(PACKAGE)] + _python_paths() + [str(p) for p in spec.readonly]
    env = dict(spec.env)
    if tmp:
        env["TMPDIR"] = str(tmp)
    report_r, report_w = os.pipe()
    config = {
        "argv": list(spec.argv), "env": env, "cwd": str(spec.workspace), "report_fd": report_w,
        "cgroup_procs": group.procs_files if group else [],
        "rlimits": _rlimits(lim, "uid" in on, "cgroup" in on) if "rlimits" in on else {},
        "uid": uid, "gid": uid, "seccomp": "seccomp" in on,
        "bwrap": _bwrap_argv(shutil.which("bwrap"), spec, readable, root, uid is not None)
        if "bubblewrap" in on else None,
        "landlock": {"read": list(SYSTEM_PATHS) + ["/proc", "/dev", "/sys"] + readable,
                     "write": [str(spec.workspace), "/tmp" if "bubblewrap" in on else str(tmp), "/dev/null"]
                     + (["/dev/shm"] if "bubblewrap" in on else []),
                     "hidden": [str(p) for p in spec.hidden],
                     # a checkout's src/ (an editable install's path entry): Python lists it to import the package
                     "list": [str(PACKAGE.parent)]} if "landlock" in on else None,
    }
    start = time.monotonic()
    try:
        proc = subprocess.Popen([sys.executable, "-I", "-S", str(LAUNCHER), "outer", json.dumps(config)],
                                cwd="/", env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session="session" in on,
                                pass_fds=(report_w,))
    finally:
        os.close(report_w)
    out, err, truncated, outcome = bytearray(), bytearray(), False, "exited"
    total, hard_cap = 0, 8 * lim.output_bytes
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ, out)
    sel.register(proc.stderr, selectors.EVENT_READ, err)
    # The run ends when both pipes close (every process that had them exited); a daemon that keeps
    # them open is covered by the wall clock, and the kill below reaches it anyway.
    # Whatever ends the wait (an interrupt included: Ctrl-C during a test run), nothing the run
    # started outlives it.
    try:
        while sel.get_map():
            left = lim.wall_s - (time.monotonic() - start)
            if left <= 0:
                outcome = "timeout"
                break
            for key, _ in sel.select(timeout=min(left, 0.5)):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    sel.unregister(key.fileobj)
                    continue
                room = lim.output_bytes - len(key.data)
                key.data.extend(chunk[:max(room, 0)])
                if on_output is not None and room > 0:
                    on_output("stdout" if key.data is out else "stderr", chunk[:room])
                truncated |= room < len(chunk)
                total += len(chunk)
            if total > hard_cap:
                outcome = "output"
                break
            if proc.poll() is not None and not _pipes_pending(sel):
                break  # the command ended; a daemon holding the pipes open must not hold the run
    except BaseException:
        _kill_everything(proc, group, uid, "session" in on)
        raise
    leftover = _kill_everything(proc, group, uid, "session" in on)
    try:
        rc = proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        rc = None
    if rc is not None and rc > 128 and config["bwrap"]:
        rc = 128 - rc  # bubblewrap exits 128 + N when the command died of signal N: say it as Popen does
    sel.close()
    proc.stdout.close()
    proc.stderr.close()
    with os.fdopen(report_r, "rb") as f:
        report = f.read(4096).decode("utf-8", "replace")
    # The launcher reports "+" just before it execs the command, or why it could not; nothing at
    # all means bubblewrap failed before the launcher ran inside it (its message is on stderr).
    error = report.lstrip("+").strip()
    if not report and outcome == "exited":
        error = "bubblewrap: " + (bytes(err).decode("utf-8", "replace").strip().splitlines() or ["failed"])[-1]
    if error:
        outcome = "sandbox"
    elif outcome == "exited" and group is not None and group.oom_killed():
        outcome = "memory"
    elif outcome == "exited" and rc is not None and rc < 0:
        outcome = {signal.SIGXCPU: "cpu", signal.SIGKILL: "killed"}.get(-rc, "killed")
    return SandboxResult(outcome, None if outcome in ("timeout", "output") else rc,
                         out.decode("utf-8", "replace"), err.decode("utf-8", "replace"),
                         time.monotonic() - start, state, truncated, error if outcome == "sandbox" else "",
                         uid, str(group.main) if group else None, leftover)


def _pipes_pending(sel: selectors.BaseSelector) -> bool:
    """Whether a pipe still has data to read right now (read what the command printed last)."""
    return bool(sel.select(timeout=0.05))


def _kill_everything(proc: subprocess.Popen, group: cgroups.RunCgroup | None, uid: int | None,
                     session: bool) -> int:
    """SIGKILL every process of the run and wait until they are gone: through the cgroup, the
    process group, the pid namespaces of bubblewrap (a daemon there is the child of the namespace's
    init, not of ours), the processes below the launcher, and the run's uid.

    Returns how many processes of the run are still there afterwards (0 unless a layer failed).
    """
    leftover = 0
    if group is not None:
        leftover += 0 if group.kill_all() else len(group.pids())
    # Found before the launcher dies (then its children go to another parent), and held by pidfd,
    # so that a pid reused by a stranger after the run's process died is never signalled.
    pids = _process_tree(proc.pid) if proc.returncode is None else []  # reaped: its pid is free
    tree = [fd for pid in pids if (fd := _pidfd(pid)) is not None]
    own = _pid_namespace(os.getpid())
    namespaces = {ns for pid in pids if (ns := _pid_namespace(pid)) not in (None, own)}
    try:
        if session:
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()
    except (ProcessLookupError, PermissionError):
        pass
    for fd in tree:
        try:
            signal.pidfd_send_signal(fd, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if namespaces:
        leftover = max(leftover, _kill_until_gone(lambda: _processes(lambda pid, _: _pid_namespace(pid) in namespaces)))
    deadline = time.monotonic() + 10
    alive = tree
    while alive and time.monotonic() < deadline:  # a pidfd reads as ready once its process ended
        ended = set(select.select(alive, [], [], max(deadline - time.monotonic(), 0))[0])
        alive = [fd for fd in alive if fd not in ended]
    leftover = max(leftover, len(alive))
    for fd in tree:
        os.close(fd)
    if uid is not None:
        leftover = max(leftover, _kill_until_gone(lambda: _uid_processes(uid)))
    return leftover


UNREADABLE = ("missing", "cannot be opened (a link?)", "not a plain file with one name", "larger than allowed")
"""Why :func:`read_result` refuses a file, first words of its message after the file's name."""


def read_result(path: str | os.PathLike, limit: int = 4 << 20, root: str | os.PathLike | None = None,
                dir_fd: int | None = None) -> bytes:
    """Read a file the sandboxed code wrote (its ``results.json``) without trusting it.

    No link is followed (``O_NOFOLLOW`` at every step below ``root``, when given), only a regular
    file with one name is read (not a FIFO that would block, not a hard link to another file), and
    at most ``limit`` bytes.

    Args:
        path: the file; with ``dir_fd``, its name inside that open folder.
        root: a folder above ``path`` that is trusted (the walk below it follows no link).
        dir_fd: an open folder the name is read from (the caller held it through the run).

    Raises:
        FoundryError: ``"<name> <why>"``, why being one of :data:`UNREADABLE`.
    """
    path = Path(path)
    parts = [path.name]
    base = path.parent
    if root is not None:
        rel = path.relative_to(root)
        base, parts = Path(root), list(rel.parts)
    flags_dir = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    why = lambda reason: FoundryError(f"{path.name} {reason}")  # noqa: E731
    try:
        fd = os.dup(dir_fd) if dir_fd is not None else os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for part in parts[:-1]:
                nxt = os.open(part, flags_dir, dir_fd=fd)
                os.close(fd)
                fd = nxt
            ffd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=fd)
        finally:
            os.close(fd)
    except FileNotFoundError:
        raise why(UNREADABLE[0]) from None
    except OSError as e:
        raise why(f"{UNREADABLE[1]} ({e.strerror})") from None
    with os.fdopen(ffd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            raise why(UNREADABLE[2])
        data = f.read(limit + 1)
    if len(data) > limit:
        raise why(f"{UNREADABLE[3]} (over {limit} bytes)")
    return data
