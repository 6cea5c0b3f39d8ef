# Attack (token __TOKEN__): a new user namespace, tracing the parent, mounting over /tmp.
import ctypes
import os

libc = ctypes.CDLL(None, use_errno=True)


def report(name, rc):
    print(f"{name}: {'refused' if rc != 0 else 'allowed'}", flush=True)


report("mount", libc.mount(b"none", b"/tmp", b"tmpfs", 0, None))
report("ptrace(parent)", libc.ptrace(16, os.getppid(), None, None))  # PTRACE_ATTACH
report("unshare(user)", libc.unshare(0x10000000))  # CLONE_NEWUSER
