"""One cgroup per sandboxed run: memory, process and CPU limits, and a kill that reaches every process.

A process that double-forks and calls ``setsid`` leaves its session and process group, but never
its cgroup; so the run's processes are killed through the cgroup at the end of every run, and a
daemon learner code left behind dies with the rest.

Both hierarchies are handled, detected at probe time:

* cgroup v2 (one tree at /sys/fs/cgroup): ``memory.max``, ``pids.max``, ``cpu.max``; the kill is
  one write to ``cgroup.kill``.
* cgroup v1 (a tree per controller): ``memory.limit_in_bytes``, ``pids.max``, ``cpu.cfs_quota_us``;
  the kill freezes the group (freezer controller) so nothing can fork while it is being killed.

The lab's own process never joins the run's cgroup: the launcher joins it (see ``launch.py``).
"""

from __future__ import annotations

import os
import secrets
import signal
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")
PARENT = "foundry-lab"  # every run's cgroup is a child of this one
V1_CONTROLLERS = ("memory", "pids", "cpu", "freezer")
NEEDED = ("memory", "pids", "cpu")


def version() -> int | None:
    """2 or 1 for the hierarchy that has the memory, pids and cpu controllers; None for neither."""
    mounts = {}
    with open("/proc/self/mounts") as f:
        for line in f:
            dev, point, fstype, opts = line.split()[:4]
            mounts[point] = (fstype, opts.split(","))
    if mounts.get(str(ROOT), ("",))[0] == "cgroup2":
        controllers = (ROOT / "cgroup.controllers").read_text().split()
        return 2 if all(c in controllers for c in NEEDED) else None
    if all(mounts.get(str(ROOT / c), ("",))[0] == "cgroup" for c in NEEDED):
        return 1
    return None


@dataclass
class RunCgroup:
    """The cgroup folders of one run (one per controller on v1, one on v2)."""

    version: int
    dirs: dict[str, Path]  # controller (or "unified") -> folder

    @property
    def procs_files(self) -> list[str]:
        """The ``cgroup.procs`` files the launcher writes itself into."""
        return [str(d / "cgroup.procs") for d in self.dirs.values()]

    @property
    def main(self) -> Path:
        """The folder whose ``cgroup.procs`` lists the run's processes."""
        return self.dirs.get("unified") or self.dirs["pids"]

    def pids(self) -> list[int]:
        """The processes in the run's cgroup now."""
        try:
            return [int(p) for p in (self.main / "cgroup.procs").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            return []

    def oom_killed(self) -> bool:
        """Whether the kernel killed a process of the run for exceeding the memory limit."""
        path = self.dirs.get("unified", self.dirs.get("memory"))
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        try:
            for line in (path / name).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value) > 0
            if self.version == 1:  # older kernels have no oom_kill count: a failed charge then says it
                return int((path / "memory.failcnt").read_text()) > 0
        except (OSError, ValueError):
            pass
        return False

    def kill_all(self, timeout: float = 10.0) -> bool:
        """SIGKILL every process of the run; True once the cgroup is empty."""
        deadline = time.monotonic() + timeout
        if self.version == 2:
            try:
                (self.main / "cgroup.kill").write_text("1")
            except FileNotFoundError:
                pass  # before Linux 5.14: the loop below kills them one by one
        else:
            freezer = self.dirs.get("freezer")
            if freezer:  # nothing forks while frozen, so one pass reaches everything
                (freezer / "freezer.state").write_text("FROZEN")
                while (freezer / "freezer.state").read_text().strip() != "FROZEN" \
                        and time.monotonic() < deadline:
                    time.sleep(0.01)
            for pid in self.pids():
                _kill(pid)
            if freezer:
                (freezer / "freezer.state").write_text("THAWED")  # the kills are delivered on thaw
        while self.pids():
            if time.monotonic() > deadline:
                return False
            for pid in self.pids():  # a v1 group without freezer: whatever forked meanwhile
                _kill(pid)
            time.sleep(0.01)
        return True

    def remove(self) -> None:
        """Remove the (empty) cgroup folders."""
        for d in self.dirs.values():
            try:
                d.rmdir()
            except OSError:
                pass


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def create(ver: int, memory_bytes: int, processes: int, cpus: float) -> RunCgroup:
    """Make the run's cgroup with its limits (needs root, or a delegated hierarchy)."""
    name = f"run-{os.getpid()}-{secrets.token_hex(4)}"
    quota, period = max(int(cpus * 100_000), 1000), 100_000
    if ver == 2:
        parent = ROOT / PARENT
        for folder in (ROOT, parent):  # a controller reaches a cgroup only if its parent hands it down
            folder.mkdir(exist_ok=True)
            enabled = (folder / "cgroup.subtree_control").read_text().split()
            missing = [c for c in NEEDED if c not in enabled]
            if missing:
                (folder / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in missing))
        d = parent / name
        d.mkdir()
        group = RunCgroup(2, {"unified": d})
        try:
            (d / "memory.max").write_text(str(memory_bytes))
            if (d / "memory.swap.max").exists():
                (d / "memory.swap.max").write_text("0")
            (d / "pids.max").write_text(str(processes))
            (d / "cpu.max").write_text(f"{quota} {period}")
        except OSError:
            group.remove()
            raise
        return group
    dirs = {}
    try:
        for ctrl in V1_CONTROLLERS:
            base = ROOT / ctrl
            if not base.is_dir():
                continue  # freezer is optional
            d = base / PARENT / name
            d.mkdir(parents=True)
            dirs[ctrl] = d
        group = RunCgroup(1, dirs)
        (dirs["memory"] / "memory.limit_in_bytes").write_text(str(memory_bytes))
        if (dirs["memory"] / "memory.memsw.limit_in_bytes").exists():  # no swapping past the limit
            (dirs["memory"] / "memory.memsw.limit_in_bytes").write_text(str(memory_bytes))
        (dirs["pids"] / "pids.max").write_text(str(processes))
        (dirs["cpu"] / "cpu.cfs_period_us").write_text(str(period))
        (dirs["cpu"] / "cpu.cfs_quota_us").write_text(str(quota))
    except OSError:
        RunCgroup(1, dirs).remove()
        raise
    return group
