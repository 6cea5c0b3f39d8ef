"""The launcher: the first process of a sandboxed run, which applies the layers and then execs.

Run as a script, never imported by the lab (``python -I -S launch.py STAGE CONFIG_JSON``), so it
needs nothing but the standard library and starts in a few milliseconds. Doing this work in a
process of its own (instead of a ``preexec_fn`` in the lab) keeps the lab's threads out of it
and lets every step fail with a clear message.

Two stages, in this order, so that each layer is set up by the last process that still has the
rights to set it up:

``outer`` (started by the lab, in a new session)
    join the run's cgroup (needs root) -> rlimits -> either exec bubblewrap, which runs the
    ``inner`` stage inside its namespaces, or go straight on to ``inner``.
``inner``
    drop to the run's own uid (root only) -> Landlock -> seccomp -> exec the learner's command.

A failure is written to the report descriptor (``report_fd``) as one line and the launcher exits
126; the descriptor is close-on-exec at the final exec, so the learner's code cannot write to it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import os
import resource
import stat
import sys

EXIT_SETUP = 126


class SetupError(Exception):
    """A layer could not be applied (the message says which and why)."""


def _fail(config: dict, message: str) -> None:
    fd = config.get("report_fd")
    data = (message.replace("\n", " ") + "\n").encode()
    try:
        os.write(fd, data) if fd is not None else os.write(2, b"foundry-sandbox: " + data)
    except OSError:
        pass
    os._exit(EXIT_SETUP)


# ---------------------------------------------------------------- outer stage

def join_cgroup(procs_files: list[str]) -> None:
    """Move this process into the run's cgroup (every controller), before anything else runs:
    its children are born inside, so the whole tree is limited and killed together."""
    for path in procs_files:
        with open(path, "w") as f:
            f.write("0")  # "0" is the writing process itself


RLIMITS = {"cpu": resource.RLIMIT_CPU, "as": resource.RLIMIT_AS, "fsize": resource.RLIMIT_FSIZE,
           "nofile": resource.RLIMIT_NOFILE, "nproc": resource.RLIMIT_NPROC, "core": resource.RLIMIT_CORE}


def set_rlimits(limits: dict[str, int]) -> None:
    """Hard and soft limits at once: the learner's code cannot raise them again. (CPU: the hard
    limit a second later, so the soft one's SIGXCPU, which says why, comes before SIGKILL.)"""
    for name, value in limits.items():
        resource.setrlimit(RLIMITS[name], (value, value + 1 if name == "cpu" else value))


# ---------------------------------------------------------------- inner stage

def drop_uid(uid: int, gid: int) -> None:
    """Become the run's own unprivileged uid/gid, with no supplementary groups (root only).

    The saved ids change too (setresuid), so there is no way back; every capability goes with them.
    """
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if os.getuid() != uid or os.geteuid() != uid or os.getgid() != gid:
        raise SetupError(f"still uid {os.geteuid()} after dropping to {uid}")


_PR_SET_NO_NEW_PRIVS = 38
_SYS_LANDLOCK_CREATE_RULESET, _SYS_LANDLOCK_ADD_RULE, _SYS_LANDLOCK_RESTRICT_SELF = 444, 445, 446
# access rights by ABI version (linux/landlock.h)
_FS_EXECUTE, _FS_WRITE_FILE, _FS_READ_FILE, _FS_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_FS_V1 = (1 << 13) - 1          # execute .. make_sym
_FS_REFER, _FS_TRUNCATE, _FS_IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
_FILE_RIGHTS = _FS_EXECUTE | _FS_WRITE_FILE | _FS_READ_FILE | _FS_TRUNCATE | _FS_IOCTL_DEV
_NET_BIND_TCP, _NET_CONNECT_TCP = 1 << 0, 1 << 1
_SCOPE_ABSTRACT_UNIX, _SCOPE_SIGNAL = 1 << 0, 1 << 1


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("fs", ctypes.c_uint64), ("net", ctypes.c_uint64), ("scoped", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def landlock_abi() -> int:
    """The kernel's Landlock ABI version (0: none)."""
    libc = ctypes.CDLL(None, use_errno=True)
    version = libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    return max(version, 0)


def apply_landlock(read: list[str], write: list[str], hidden: list[str], listable: list[str] = ()) -> None:
    """Allow reading only ``read``, writing only ``write``, listing (names only) ``listable`` as
    well; no TCP; no signals out of the sandbox.

    A ``hidden`` path inside a readable one is cut out by allowing its siblings one by one on
    the way down (Landlock only allows, never denies). The folders on that way keep ``READ_DIR``
    so imports still list them: a hidden folder's file *names* stay visible, its contents do not.
    """
    abi = landlock_abi()
    if abi < 1:
        raise SetupError("the kernel has no Landlock")
    fs = _FS_V1 | (_FS_REFER if abi >= 2 else 0) | (_FS_TRUNCATE if abi >= 3 else 0) | \
        (_FS_IOCTL_DEV if abi >= 5 else 0)
    attr = _RulesetAttr(fs, (_NET_BIND_TCP | _NET_CONNECT_TCP) if abi >= 4 else 0,
                        (_SCOPE_ABSTRACT_UNIX | _SCOPE_SIGNAL) if abi >= 6 else 0)
    size = 8 if abi < 4 else 16 if abi < 6 else 24
    libc = ctypes.CDLL(None, use_errno=True)
    ruleset = libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size),
                           ctypes.c_uint32(0))
    if ruleset < 0:
        raise SetupError(f"landlock_create_ruleset: {os.strerror(ctypes.get_errno())}")

    def allow(path: str, rights: int) -> None:
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            return  # a path that does not exist needs no rule
        try:
            if not stat.S_ISDIR(os.fstat(fd).st_mode):
                rights &= _FILE_RIGHTS
            rule = _PathBeneath(rights & fs, fd)
            if libc.syscall(_SYS_LANDLOCK_ADD_RULE, ruleset, 1, ctypes.byref(rule), 0) < 0:
                raise SetupError(f"landlock_add_rule {path}: {os.strerror(ctypes.get_errno())}")
        finally:
            os.close(fd)

    hidden_set = {os.path.realpath(h) for h in hidden}
    read_rights = _FS_EXECUTE | _FS_READ_FILE | _FS_READ_DIR

    def allow_read(path: str) -> None:
        if path in hidden_set:
            return
        if not any(h.startswith(path.rstrip("/") + "/") for h in hidden_set):
            allow(path, read_rights)
            return
        allow(path, _FS_READ_DIR)  # listable, so that imports from it still work
        try:
            entries = list(os.scandir(path))
        except OSError:
            return  # a folder the run cannot list: it cannot read what is in it either
        for entry in entries:
            if not entry.is_symlink():  # a link is checked at its target
                allow_read(entry.path)

    for path in read:
        allow_read(os.path.realpath(path))
    for path in write:
        allow(os.path.realpath(path), fs)
    for path in listable:
        allow(os.path.realpath(path), _FS_READ_DIR)
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise SetupError(f"no_new_privs: {os.strerror(ctypes.get_errno())}")
    if libc.syscall(_SYS_LANDLOCK_RESTRICT_SELF, ruleset, ctypes.c_uint32(0)) != 0:
        raise SetupError(f"landlock_restrict_self: {os.strerror(ctypes.get_errno())}")
    os.close(ruleset)


# seccomp (through libseccomp, which names the syscalls of every architecture)
_SCMP_ACT_ALLOW = 0x7FFF0000
_SCMP_CMP_NE, _SCMP_CMP_MASKED_EQ = 1, 7
_AF_UNIX = 1
_TIOCSTI, _TIOCLINUX = 0x5412, 0x541C
_CLONE_NEW = {"user": 0x10000000, "ns": 0x00020000, "net": 0x40000000, "pid": 0x20000000,
              "ipc": 0x08000000, "uts": 0x04000000, "cgroup": 0x02000000}
# Denied outright: debugging other processes, changing the filesystem view or the namespaces,
# kernel keyrings, BPF and perf (a large kernel attack surface), loading modules, io_uring (which
# would run socket calls behind this filter's back), and the rest of the administrator's calls.
DENIED_SYSCALLS = (
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd",
    "mount", "umount2", "pivot_root", "chroot", "fsopen", "fsconfig", "fsmount", "fspick",
    "move_mount", "open_tree", "mount_setattr", "unshare", "setns",
    "keyctl", "add_key", "request_key", "bpf", "perf_event_open", "userfaultfd",
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load",
    "open_by_handle_at", "name_to_handle_at", "reboot", "swapon", "swapoff", "acct", "quotactl",
    "syslog", "settimeofday", "clock_settime", "adjtimex", "clock_adjtime", "sethostname",
    "setdomainname", "iopl", "ioperm", "lookup_dcookie", "vhangup", "nfsservctl",
)


class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("a", ctypes.c_uint64), ("b", ctypes.c_uint64)]


def _errno_action(err: int) -> int:
    return 0x00050000 | (err & 0xFFFF)


def apply_seccomp() -> None:
    """Load the filter: the calls above fail with EPERM, sockets other than AF_UNIX too, TIOCSTI
    (typing into the lab's terminal) and namespace flags of clone; clone3 says ENOSYS, so the C
    library falls back to clone, whose flags the filter can see."""
    name = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError as e:
        raise SetupError(f"libseccomp not found ({e})") from None
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                           ctypes.POINTER(_ArgCmp)]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    ctx = lib.seccomp_init(_SCMP_ACT_ALLOW)
    if not ctx:
        raise SetupError("seccomp_init failed")

    def rule(syscall: str, err: int, *cmps: tuple[int, int, int, int]) -> None:
        nr = lib.seccomp_syscall_resolve_name(syscall.encode())
        if nr < 0:
            return  # not a call of this architecture
        arr = (_ArgCmp * max(len(cmps), 1))(*[_ArgCmp(*c) for c in cmps])
        rc = lib.seccomp_rule_add_array(ctx, _errno_action(err), nr, len(cmps), arr)
        if rc < 0:
            raise SetupError(f"seccomp rule for {syscall}: {os.strerror(-rc)}")

    for syscall in DENIED_SYSCALLS:
        rule(syscall, errno.EPERM)
    rule("socket", errno.EPERM, (0, _SCMP_CMP_NE, _AF_UNIX, 0))
    rule("socketpair", errno.EPERM, (0, _SCMP_CMP_NE, _AF_UNIX, 0))
    for request in (_TIOCSTI, _TIOCLINUX):
        rule("ioctl", errno.EPERM, (1, _SCMP_CMP_MASKED_EQ, 0xFFFFFFFF, request))
    for flag in _CLONE_NEW.values():
        rule("clone", errno.EPERM, (0, _SCMP_CMP_MASKED_EQ, flag, flag))
    rule("clone3", errno.ENOSYS)
    rc = lib.seccomp_load(ctx)  # sets no_new_privs itself (libseccomp's default)
    lib.seccomp_release(ctx)
    if rc < 0:
        raise SetupError(f"seccomp_load: {os.strerror(-rc)}")


# ---------------------------------------------------------------- the stages

def inner(config: dict) -> None:
    """Drop the uid, then Landlock, then seccomp (last: it also forbids what the others need), exec."""
    step = "start"
    try:
        # never gain privileges again, whatever the layers: exec of a setuid program gives nothing
        if ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise SetupError(f"no_new_privs: {os.strerror(ctypes.get_errno())}")
        if config.get("uid") is not None:
            step = "uid"
            drop_uid(config["uid"], config["gid"])
        if config.get("landlock"):
            step = "landlock"
            ll = config["landlock"]
            apply_landlock(ll["read"], ll["write"], ll["hidden"], ll.get("list", []))
        os.chdir(config["cwd"])
        if config.get("seccomp"):
            step = "seccomp"
            apply_seccomp()
        step = "exec"
        if config.get("report_fd") is not None:
            os.write(config["report_fd"], b"+")  # reached the exec (an exec error follows it)
            os.set_inheritable(config["report_fd"], False)
        os.execve(config["argv"][0], config["argv"], config["env"])
    except PermissionError as e:
        why = (" (the run's own uid cannot reach it: a folder above it is closed to other users; without"
               " bubblewrap, the command must live where every user may read it)") if config.get("uid") else ""
        _fail(config, f"{step}: {e}{why}")
    except (OSError, SetupError) as e:
        _fail(config, f"{step}: {e}")


def outer(config: dict) -> None:
    """Join the cgroup and set the rlimits as root, then hand over to bubblewrap or go on."""
    step = "start"
    try:
        step = "cgroup"
        join_cgroup(config.get("cgroup_procs", []))
        step = "rlimits"
        set_rlimits(config.get("rlimits", {}))
        if config.get("bwrap"):
            step = "bubblewrap"
            inner_argv = [sys.executable, "-I", "-S", os.path.abspath(__file__), "inner", json.dumps(config)]
            os.execve(config["bwrap"][0], config["bwrap"] + inner_argv, config["env"])
    except (OSError, SetupError) as e:
        _fail(config, f"{step}: {e}")
    inner(config)


if __name__ == "__main__":
    stage, cfg = sys.argv[1], json.loads(sys.argv[2])
    {"outer": outer, "inner": inner}[stage](cfg)
