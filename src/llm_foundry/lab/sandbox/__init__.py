"""Running learner code in a sandbox: the one interface the Lab calls.

    result = run(SandboxSpec(argv=[sys.executable, "-m", "pytest", ...], workspace=ws))

Learner code never runs in the lab's own process. ``run`` starts it in a new session and
process group with resource limits, kills the whole group at the end, caps what it prints,
and says in ``SandboxResult.layers`` which protection layers were on and which were off
(and why), so every result can show a degraded mode.

This first implementation has the portable layers only (a new session, rlimits, a wall-clock
limit, output caps); the isolation layers (own uid, cgroups, bubblewrap, seccomp, Landlock)
are reported as off until they are added behind this same interface.
"""

from __future__ import annotations

import os
import resource
import selectors
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

# Every layer a result reports, in the order they are applied.
LAYERS = ("session", "rlimits", "uid", "cgroup", "bubblewrap", "seccomp", "landlock")


@dataclass(frozen=True)
class Limits:
    """Resource limits of one sandboxed run.

    Attributes:
        wall_s: wall-clock limit; the whole process group is killed after it.
        cpu_s: CPU seconds (RLIMIT_CPU).
        memory_bytes: address space / memory limit.
        processes: processes and threads the run may have at once.
        output_bytes: bytes of stdout and of stderr kept (the rest is read and dropped).
        file_bytes: the largest file it may write (RLIMIT_FSIZE).
        open_files: descriptors (RLIMIT_NOFILE).
    """

    wall_s: float = 60.0
    cpu_s: int = 120
    memory_bytes: int = 2 << 30
    processes: int = 64
    output_bytes: int = 1 << 20
    file_bytes: int = 64 << 20
    open_files: int = 256


@dataclass(frozen=True)
class SandboxSpec:
    """What to run and what it may see.

    Attributes:
        argv: the command (``argv[0]`` an absolute path).
        workspace: the one writable folder; the command's working directory.
        readonly: other paths the command needs to read (the Python environment, the package).
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
        outcome: ``exited``, ``timeout`` (wall clock), ``cpu`` (CPU limit), ``memory``, ``output`` (killed
            for printing past a hard cap) or ``killed`` (another signal).
        returncode: the exit status (negative: the signal), None when it never ended by itself.
        stdout, stderr: what it printed, each cut at ``limits.output_bytes`` (``truncated`` says so).
        duration_s: wall-clock seconds.
        layers: every layer of :data:`LAYERS` -> ``"on"`` or ``"off: <why>"``.
    """

    outcome: str
    returncode: int | None
    stdout: str
    stderr: str
    duration_s: float
    layers: dict[str, str]
    truncated: bool = False

    @property
    def degraded(self) -> bool:
        """Some protection layer was off."""
        return any(v != "on" for v in self.layers.values())


def probe() -> dict[str, str]:
    """Which layers this machine can apply (``"on"``) and which not (``"off: <why>"``)."""
    off = "off: not implemented yet"
    return {"session": "on", "rlimits": "on", "uid": off, "cgroup": off, "bubblewrap": off,
            "seccomp": off, "landlock": off}


def run(spec: SandboxSpec, layers: set[str] | None = None) -> SandboxResult:
    """Run ``spec`` with every available layer (or only ``layers``, e.g. to test a degraded mode)."""
    state = probe()
    if layers is not None:
        state = {k: (v if k in layers or v != "on" else "off: disabled by the caller") for k, v in state.items()}
    lim = spec.limits

    def limit_child() -> None:
        if state["rlimits"] == "on":
            for res, value in ((resource.RLIMIT_CPU, lim.cpu_s), (resource.RLIMIT_AS, lim.memory_bytes),
                               (resource.RLIMIT_FSIZE, lim.file_bytes), (resource.RLIMIT_NOFILE, lim.open_files)):
                resource.setrlimit(res, (value, value))

    start = time.monotonic()
    proc = subprocess.Popen(spec.argv, cwd=spec.workspace, env=dict(spec.env), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                            preexec_fn=limit_child)
    out, err, truncated, outcome = bytearray(), bytearray(), False, "exited"
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ, out)
    sel.register(proc.stderr, selectors.EVENT_READ, err)
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
            truncated |= room < len(chunk)
    _kill_group(proc.pid)
    try:
        rc = proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        rc = None
    sel.close()
    if outcome == "exited" and rc is not None and rc < 0:
        outcome = {signal.SIGXCPU: "cpu", signal.SIGKILL: "killed"}.get(-rc, "killed")
    return SandboxResult(outcome, None if outcome == "timeout" else rc, out.decode("utf-8", "replace"),
                         err.decode("utf-8", "replace"), time.monotonic() - start, state, truncated)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
