"""The Lab's sandbox against learner code that attacks it.

Each attack is a piece of learner Python (``tests/lab_attacks/NAME.py``) run through
``sandbox.run`` with ``python -c``, exactly as the engine runs a learner's tests. Every attack
asserts the same four things, besides its own:

* contained: the run ended within 15 s;
* the harness is alive: this process, and a canary process of the lab's user it must not reach;
* nothing is left running: no process carrying the attack's token, none of the run's uid, and the
  run's cgroup is gone;
* nothing outside the workspace changed: a world-writable sentinel folder is as it was.

The full configuration runs in the normal suite. The same attacks run with each layer off in turn
under the ``sandbox_matrix`` marker (``make test-sandbox``); where a layer's absence removes a
guarantee, the test says so (``lost(...)``) and skips that one assertion, not the whole test.

Dangerous attacks (fork and memory bombs, kill(-1), filling the disk) run only inside limits set
first (the run's own uid and a cgroup with pids.max and a memory limit); without them they skip.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import warnings
from pathlib import Path

import pytest

from llm_foundry.lab import sandbox
from llm_foundry.lab.sandbox import Limits, SandboxSpec
from llm_foundry.utils.errors import FoundryError

ATTACKS = Path(__file__).parent / "lab_attacks"
AVAILABLE = sandbox.probe()
FULL = {name for name, state in AVAILABLE.items() if state == "on"}
CONTAINED_S = 15.0

# "full": every layer this machine has; "no-X": the same with X off (only where X is on here).
CONFIGS = [pytest.param("full", id="full")] + [
    pytest.param(f"no-{layer}", id=f"no-{layer}", marks=pytest.mark.sandbox_matrix) for layer in sandbox.LAYERS
    if layer in FULL]


@pytest.fixture(params=CONFIGS)
def layers(request) -> set[str]:
    """The layers of this configuration."""
    name = request.param
    return set(FULL) if name == "full" else FULL - {name[3:]}


@pytest.fixture(scope="module")
def canary():
    """A process of the lab's own user that no attack may reach (kill(-1), kill of the parent)."""
    proc = subprocess.Popen(["sleep", "3600"], start_new_session=True)
    yield proc
    proc.kill()
    proc.wait()


@pytest.fixture(scope="module")
def sentinel():
    """A folder outside the workspace that anyone may write to: only the sandbox keeps it unchanged."""
    folder = Path(tempfile.mkdtemp(prefix="foundry-sentinel-"))
    os.chmod(folder, 0o777)
    (folder / "keep.txt").write_text("unchanged\n")
    os.chmod(folder / "keep.txt", 0o666)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture()
def workspace():
    """A fresh workspace directly under /tmp (every folder above it is open to the run's uid)."""
    folder = Path(tempfile.mkdtemp(prefix="foundry-ws-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _snapshot(folder: Path) -> list[tuple]:
    return sorted((p.name, p.stat().st_size, p.read_bytes()) for p in folder.iterdir())


def _python(layers: set[str]) -> str:
    """The interpreter of the attacks: this one, unless the run's uid cannot reach it without
    bubblewrap (a Python under /root); then the system's, since attacks need only the standard library."""
    if "bubblewrap" in layers or "uid" not in layers or _open_to_others(sys.executable):
        return sys.executable
    if not os.path.exists("/usr/bin/python3"):
        pytest.skip("no interpreter the run's own uid can reach without bubblewrap")
    return "/usr/bin/python3"


def _open_to_others(path: str) -> bool:
    real = Path(os.path.realpath(path))
    return all(os.stat(p).st_mode & stat.S_IXOTH for p in [*real.parents]) and bool(os.stat(real).st_mode & 0o005)


def lost(layers: set[str], needs: set[str], guarantee: str) -> bool:
    """Whether ``guarantee`` is lost in this configuration (it holds while any layer of ``needs`` is
    on); says so, so that a degraded run shows what it no longer checks."""
    if layers & needs:
        return False
    warnings.warn(f"with {', '.join(sorted(FULL - layers)) or 'no layer'} off: {guarantee} is not guaranteed",
                  stacklevel=2)
    return True


def dangerous(layers: set[str]) -> None:
    """Skip unless the run's own uid and cgroup (pids.max, memory limit) are there to hold the attack."""
    missing = {"uid", "cgroup"} - layers
    if missing:
        pytest.skip(f"dangerous attack: runs only inside the {' and '.join(sorted(missing))} layer(s), "
                    f"which are off here ({'; '.join(_why_off(m) for m in sorted(missing))})")


def _why_off(layer: str) -> str:
    state = AVAILABLE.get(layer, "off: unknown layer")
    return f"{layer}: disabled in this configuration" if state == "on" else f"{layer}: {state[5:]}"


def attack(name: str, layers: set[str], workspace: Path, canary, sentinel: Path, limits: Limits = Limits(),
           readonly=(), hidden=(), **subs: str) -> sandbox.SandboxResult:
    """Run attack ``name`` and assert the four guarantees every attack shares."""
    token = uuid.uuid4().hex
    code = (ATTACKS / f"{name}.py").read_text().replace("__TOKEN__", token)
    for key, value in subs.items():
        code = code.replace(f"__{key.upper()}__", value)
    before = _snapshot(sentinel)
    start = time.monotonic()
    result = sandbox.run(SandboxSpec([_python(layers), "-c", code], workspace, readonly=tuple(readonly),
                                     hidden=tuple(hidden), env={"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"},
                                     limits=limits), layers=layers)
    assert time.monotonic() - start < CONTAINED_S, f"{name} was not contained within {CONTAINED_S} s"
    assert result.outcome != "sandbox", result.error
    # the harness is alive: this process runs this line; the canary of the lab's user too
    assert canary.poll() is None, f"{name} killed a process of the lab's user"
    # nothing left running
    assert result.leftover == 0
    alive = _processes_with(token)
    if alive and lost(layers, {"cgroup", "uid", "bubblewrap"}, "that nothing of the run outlives it"):
        for pid in alive:  # the test cleans up what the sandbox could not
            os.kill(pid, signal.SIGKILL)
    else:
        assert alive == [], f"{name} left processes running: {alive}"
    if result.uid is not None:
        assert sandbox._uid_processes(result.uid) == []
    if result.cgroup is not None:
        assert not Path(result.cgroup).exists(), "the run's cgroup was not removed"
    # nothing outside the workspace changed
    assert _snapshot(sentinel) == before, f"{name} changed a folder outside its workspace"
    assert result.layers == {k: (v if k in layers or v != "on" else "off: disabled by the caller")
                             for k, v in AVAILABLE.items()}
    return result


def _processes_with(token: str) -> list[int]:
    """Live processes whose command line carries ``token`` (the attack's code is its ``-c`` argument)."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry.name}/cmdline").read_bytes()
            state = Path(f"/proc/{entry.name}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if token.encode() in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


# ------------------------------------------------------------------ processes and resources

def test_fork_bomb(layers, workspace, canary, sentinel):
    dangerous(layers)
    r = attack("fork_bomb", layers, workspace, canary, sentinel, Limits(wall_s=4, processes=32))
    assert r.outcome in ("timeout", "exited", "killed")


def test_thread_bomb(layers, workspace, canary, sentinel):
    dangerous(layers)
    r = attack("thread_bomb", layers, workspace, canary, sentinel, Limits(wall_s=8, processes=32))
    assert "threads started" in r.stdout, r.stderr
    started = int(r.stdout.split()[0])
    assert started < 32, "more threads than the process limit"


def test_memory_bomb(layers, workspace, canary, sentinel):
    dangerous(layers)
    r = attack("memory_bomb", layers, workspace, canary, sentinel, Limits(wall_s=10, memory_bytes=256 << 20))
    # the cgroup kills the run (outcome memory) or the address-space limit refuses (MemoryError)
    assert r.outcome == "memory" or "MemoryError" in r.stderr, (r.outcome, r.stderr[-500:])


def test_one_huge_allocation(layers, workspace, canary, sentinel):
    r = attack("huge_allocation", layers, workspace, canary, sentinel, Limits(wall_s=10, memory_bytes=256 << 20))
    assert r.outcome in ("exited", "memory")
    assert "refused" in r.stdout or r.outcome == "memory", r.stdout + r.stderr[-500:]


def test_cpu_loop(layers, workspace, canary, sentinel):
    r = attack("cpu_loop", layers, workspace, canary, sentinel, Limits(wall_s=6, cpu_s=1))
    if lost(layers, {"rlimits"}, "the CPU-seconds limit (the wall clock still ends it)"):
        assert r.outcome == "timeout"
    else:
        assert r.outcome == "cpu"


def test_sleep_forever(layers, workspace, canary, sentinel):
    r = attack("sleep_forever", layers, workspace, canary, sentinel, Limits(wall_s=1.5))
    assert r.outcome == "timeout" and r.returncode is None


def test_ignoring_sigterm(layers, workspace, canary, sentinel):
    r = attack("ignore_sigterm", layers, workspace, canary, sentinel, Limits(wall_s=1.5))
    assert r.outcome == "timeout"


def test_exhausting_descriptors(layers, workspace, canary, sentinel):
    r = attack("exhaust_fds", layers, workspace, canary, sentinel, Limits(wall_s=10, open_files=64))
    assert "descriptors opened" in r.stdout, r.stderr[-500:]
    if not lost(layers, {"rlimits"}, "the descriptor limit"):
        assert int(r.stdout.split()[0]) <= 64


def test_ten_megabytes_of_output(layers, workspace, canary, sentinel):
    r = attack("big_output", layers, workspace, canary, sentinel, Limits(wall_s=10, output_bytes=256 << 10))
    assert r.truncated
    assert len(r.stdout.encode()) <= 256 << 10
    assert r.outcome in ("exited", "output")


def test_reading_stdin(layers, workspace, canary, sentinel):
    r = attack("read_stdin", layers, workspace, canary, sentinel, Limits(wall_s=5))
    assert r.outcome == "exited" and r.returncode == 0
    assert r.stdout.strip() == "stdin gave 0 bytes"


# ------------------------------------------------------------------ escaping: processes

def test_double_forked_daemon_dies(layers, workspace, canary, sentinel):
    r = attack("daemon", layers, workspace, canary, sentinel, Limits(wall_s=10))
    # the command itself exits at once; attack() checked that the daemon did not survive the run
    assert r.outcome == "exited" and r.returncode == 0, r.stderr[-500:]
    assert (workspace / "daemon-started").exists(), "the daemon never ran, so the test shows nothing"


def test_killing_the_parent(layers, workspace, canary, sentinel):
    if not layers & ({"uid", "bubblewrap"} | ({"landlock"} if _landlock_abi() >= 6 else set())):
        pytest.skip("unsafe here: without the run's own uid, bubblewrap or Landlock's signal scope, "
                    "the parent is the harness")
    r = attack("kill_parent", layers, workspace, canary, sentinel, Limits(wall_s=5))
    assert r.outcome in ("exited", "killed")


def test_killing_every_process(layers, workspace, canary, sentinel):
    dangerous(layers)  # kill(-1) is only safe under the run's own uid
    r = attack("kill_everything", layers, workspace, canary, sentinel, Limits(wall_s=5))
    assert r.outcome in ("exited", "killed")


def test_new_namespaces_and_ptrace_refused(layers, workspace, canary, sentinel):
    if not layers & {"uid", "bubblewrap"}:
        pytest.skip("unsafe here: without the run's own uid or bubblewrap, a mount allowed by a missing "
                    "filter would change the lab's own /tmp")
    r = attack("syscalls", layers, workspace, canary, sentinel, Limits(wall_s=5))
    report = dict(line.split(": ", 1) for line in r.stdout.splitlines() if ": " in line)
    assert set(report) == {"unshare(user)", "ptrace(parent)", "mount"}, r.stdout + r.stderr[-500:]
    if not lost(layers, {"seccomp"}, "that unshare, ptrace and mount are refused by the filter"):
        assert all(v == "refused" for v in report.values()), report
    assert report["mount"] == "refused"  # without capabilities, mount fails whatever the filter


# ------------------------------------------------------------------ escaping: files

@pytest.fixture()
def secret_tree():
    """A fake installed package with a reference answer, a fake progress database and a root-only file."""
    top = Path(tempfile.mkdtemp(prefix="foundry-tree-"))
    os.chmod(top, 0o755)
    pkg = top / "pkg"
    solution = pkg / "lab" / "modules" / "01_welcome" / "solution"
    solution.mkdir(parents=True)
    (pkg / "lab" / "helper.py").write_text("VISIBLE = 'library code is readable'\n")
    (solution / "hello.py").write_text("ANSWER = 'reference-answer-secret'\n")
    home = top / "home"
    (home / ".foundry").mkdir(parents=True)
    (home / ".foundry" / "lab.db").write_text("progress-db-secret")
    (pkg / "root_only.txt").write_text("root-only-secret")
    os.chmod(pkg / "root_only.txt", 0o600)
    for folder in (pkg, home, home / ".foundry", *pkg.rglob("*")):
        if folder.is_dir():
            os.chmod(folder, 0o755)
    yield top
    shutil.rmtree(top, ignore_errors=True)


def test_reading_a_root_only_file(layers, workspace, canary, sentinel, secret_tree):
    if os.geteuid() != 0:
        pytest.skip("the file must belong to root, so the lab must run as root")
    pkg = secret_tree / "pkg"
    r = attack("read_file", layers, workspace, canary, sentinel, readonly=[pkg], path=str(pkg / "root_only.txt"))
    assert "root-only-secret" not in r.stdout + r.stderr or lost(
        layers, {"uid"}, "that root's files are closed to learner code (it runs as root, without capabilities)")


def test_reading_the_shadow_file(layers, workspace, canary, sentinel):
    if not os.path.exists("/etc/shadow"):
        pytest.skip("no /etc/shadow here")
    r = attack("read_file", layers, workspace, canary, sentinel, path="/etc/shadow")
    assert r.stdout.startswith("refused") or lost(layers, {"uid"}, "that /etc/shadow is unreadable"), r.stdout


def test_reading_the_reference_answers(layers, workspace, canary, sentinel, secret_tree):
    pkg = secret_tree / "pkg"
    solution = pkg / "lab" / "modules" / "01_welcome" / "solution"
    r = attack("read_hidden", layers, workspace, canary, sentinel, readonly=[pkg], hidden=[solution],
               path=str(solution / "hello.py"), visible=str(pkg / "lab" / "helper.py"))
    assert "library code is readable" in r.stdout, r.stdout + r.stderr[-500:]  # the package itself still reads
    if not lost(layers, {"bubblewrap", "landlock"}, "that the reference answers are hidden"):
        assert "reference-answer-secret" not in r.stdout + r.stderr


def test_reading_the_progress_database(layers, workspace, canary, sentinel, secret_tree):
    home = secret_tree / "home"
    db = home / ".foundry" / "lab.db"
    r = attack("read_hidden", layers, workspace, canary, sentinel, readonly=[home], hidden=[db],
               path=str(db), visible=str(db.parent))
    if not lost(layers, {"bubblewrap", "landlock"}, "that the progress database is hidden"):
        assert "progress-db-secret" not in r.stdout + r.stderr


def test_writing_outside_the_workspace(layers, workspace, canary, sentinel):
    r = attack("write_outside", layers, workspace, canary, sentinel, target=str(sentinel))
    # attack() checked the sentinel folder; the workspace itself stays writable
    assert (workspace / "inside.txt").read_text() == "inside", r.stderr[-500:]
    assert r.stdout.count("refused") == 3 or lost(
        layers, {"bubblewrap", "landlock"}, "that only the workspace is writable"), r.stdout


def test_filling_the_disk_with_one_file(layers, workspace, canary, sentinel):
    dangerous(layers)
    if lost(layers, {"rlimits"}, "the file-size limit"):
        pytest.skip("without RLIMIT_FSIZE this would fill the real disk")
    r = attack("fill_file", layers, workspace, canary, sentinel, Limits(wall_s=10, file_bytes=4 << 20))
    assert "stopped" in r.stdout, r.stderr[-500:]
    assert (workspace / "fill.bin").stat().st_size <= 4 << 20


def test_filling_the_private_tmp(layers, workspace, canary, sentinel):
    dangerous(layers)
    if lost(layers, {"bubblewrap"}, "a size-limited private /tmp"):
        pytest.skip("without bubblewrap /tmp is on the real disk")
    r = attack("fill_tmp", layers, workspace, canary, sentinel, Limits(wall_s=10, tmp_bytes=8 << 20))
    assert "stopped" in r.stdout, r.stderr[-500:]
    assert int(r.stdout.split()[1]) <= 8 << 20


def test_results_file_linked_to_a_secret(layers, workspace, canary, sentinel, secret_tree):
    secret = secret_tree / "pkg" / "root_only.txt"
    attack("results_link", layers, workspace, canary, sentinel, path=str(secret))
    assert (workspace / "results.json").is_symlink()
    with pytest.raises(FoundryError) as err:
        sandbox.read_result(workspace / "results.json", root=workspace)
    assert "root-only-secret" not in str(err.value)


def test_results_file_that_would_block_or_is_huge(layers, workspace, canary, sentinel):
    attack("results_fifo", layers, workspace, canary, sentinel)
    with pytest.raises(FoundryError, match="not a plain file"):
        sandbox.read_result(workspace / "results.json", root=workspace)  # a FIFO: no open blocks
    with pytest.raises(FoundryError, match="a link"):
        sandbox.read_result(workspace / "out" / "results.json", root=workspace)  # out/ is a link to /etc
    with pytest.raises(FoundryError, match="larger than"):
        sandbox.read_result(workspace / "big.json", limit=1 << 20, root=workspace)


# ------------------------------------------------------------------ escaping: the network

@pytest.fixture()
def listener():
    """A real TCP listener on loopback (never another address) that counts who connects."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.2)
    accepted: list[bytes] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except (socket.timeout, OSError):
                continue
            accepted.append(b"connected")
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1], accepted
    stop.set()
    thread.join()
    server.close()


def test_connecting_to_a_loopback_port(layers, workspace, canary, sentinel, listener):
    port, accepted = listener
    r = attack("connect_tcp", layers, workspace, canary, sentinel, Limits(wall_s=10), port=str(port))
    # landlock refuses TCP only from its ABI 4; seccomp refuses the socket; bubblewrap's network namespace
    # has a loopback of its own, where nothing listens
    if not lost(layers, {"seccomp", "bubblewrap"} | ({"landlock"} if _landlock_abi() >= 4 else set()),
                "that learner code cannot reach the lab's network"):
        assert r.stdout.startswith("refused"), r.stdout + r.stderr[-500:]
        assert accepted == []


def test_sending_udp_to_loopback(layers, workspace, canary, sentinel):
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.setblocking(False)
    try:
        r = attack("send_udp", layers, workspace, canary, sentinel, Limits(wall_s=10),
                   port=str(receiver.getsockname()[1]))
        if not lost(layers, {"seccomp", "bubblewrap"}, "that learner code cannot send datagrams"):
            with pytest.raises(BlockingIOError):
                receiver.recv(100)
            assert r.stdout.startswith(("refused", "sent")), r.stdout + r.stderr[-500:]
    finally:
        receiver.close()


def _landlock_abi() -> int:
    from llm_foundry.lab.sandbox.launch import landlock_abi
    return landlock_abi()


# ------------------------------------------------------------------ the sandbox itself

def test_every_result_names_its_layers_and_the_lab_stays_unlimited(workspace):
    own_limits = [resource.getrlimit(r) for r in range(10)]
    own_cgroup = Path("/proc/self/cgroup").read_text()
    r = sandbox.run(SandboxSpec([_python(FULL), "-c", "print('hi')"], workspace, env={}))
    assert r.outcome == "exited" and r.stdout == "hi\n", r.error or r.stderr
    assert set(r.layers) == set(sandbox.LAYERS)
    assert all(v == "on" or v.startswith("off: ") for v in r.layers.values())
    assert r.degraded == (FULL != set(sandbox.LAYERS))
    degraded = sandbox.run(SandboxSpec([sys.executable, "-c", "pass"], workspace), layers={"session"})
    assert degraded.degraded and degraded.layers["rlimits"] == "off: disabled by the caller"
    assert [resource.getrlimit(r) for r in range(10)] == own_limits
    assert Path("/proc/self/cgroup").read_text() == own_cgroup


def test_the_workspace_is_lent_and_given_back(workspace):
    if "uid" not in FULL:
        pytest.skip(AVAILABLE["uid"])
    (workspace / "mine.py").write_text("x = 1\n")
    outside = Path(tempfile.mkdtemp(prefix="foundry-outside-")) / "secret.txt"
    outside.write_text("secret of the lab's user")
    os.chmod(outside, 0o600)
    os.link(outside, workspace / "linked.txt")  # a second name inside: lending it would lend the file
    owner = os.stat(workspace)
    code = ("import os; open('new.txt', 'w').write(str(os.getuid()))\n"
            "try: print(open('linked.txt').read())\nexcept OSError: print('refused')")
    try:
        r = sandbox.run(SandboxSpec([_python(FULL), "-c", code], workspace))
        assert (os.stat(outside).st_uid, os.stat(outside).st_mode & 0o777) == (owner.st_uid, 0o600)
    finally:
        shutil.rmtree(outside.parent)
    assert r.outcome == "exited" and r.returncode == 0, r.error or r.stderr
    assert int((workspace / "new.txt").read_text()) == r.uid and r.uid != 0
    assert r.stdout == "refused\n"
    for path in (workspace, workspace / "mine.py", workspace / "new.txt"):
        assert (os.stat(path).st_uid, os.stat(path).st_gid) == (owner.st_uid, owner.st_gid)


def test_a_command_that_cannot_start_says_why(workspace):
    r = sandbox.run(SandboxSpec(["/no/such/python", "-c", "pass"], workspace))
    assert r.outcome == "sandbox" and "/no/such/python" in r.error
    with pytest.raises(FoundryError, match="absolute path"):
        sandbox.run(SandboxSpec(["python3"], workspace))
    with pytest.raises(FoundryError, match="not a folder"):
        sandbox.run(SandboxSpec([sys.executable], workspace / "missing"))


def test_an_unprivileged_lab_says_which_layers_are_off(workspace, secret_tree):
    """The lab run as an ordinary user: uid and cgroup off (and said so), the rest still hides the answers."""
    setpriv, python = shutil.which("setpriv"), "/usr/bin/python3"
    src = Path(sandbox.__file__).resolve().parents[3]
    if os.geteuid() != 0 or setpriv is None or not os.path.exists(python) or not _open_to_others(
            str(src / "llm_foundry" / "__init__.py")):
        pytest.skip("needs root (to become another user), setpriv, /usr/bin/python3 and a checkout every user may read")
    solution = secret_tree / "pkg" / "lab" / "modules" / "01_welcome" / "solution"
    os.chmod(workspace, 0o777)
    code = f"""
import json, sys
from llm_foundry.lab import sandbox
r = sandbox.run(sandbox.SandboxSpec([sys.executable, "-c", "print(open({str(solution / 'hello.py')!r}).read())"],
                {str(workspace)!r}, readonly=[{str(secret_tree)!r}], hidden=[{str(solution)!r}]))
print(json.dumps({{"layers": r.layers, "stdout": r.stdout, "outcome": r.outcome, "error": r.error}}))
"""
    done = subprocess.run([setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", python, "-c", code],
                          capture_output=True, text=True, timeout=60, cwd="/",
                          env={"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin", "HOME": "/nonexistent"})
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.splitlines()[-1])
    assert report["layers"]["uid"].startswith("off: ") and report["layers"]["cgroup"].startswith("off: ")
    assert report["outcome"] == "exited", report["error"]
    assert "reference-answer-secret" not in report["stdout"]
    if {"bubblewrap", "landlock"} & FULL:
        assert any(report["layers"][k] == "on" for k in ("bubblewrap", "landlock"))


def test_the_library_imports_inside_from_a_checkout(layers, workspace):
    """Module tests compare with the library itself: it must import inside, from an install or from a
    checkout (an editable install's path entry is the checkout's src/, which Python must list)."""
    python = _python(layers)
    src = Path(sandbox.__file__).resolve().parents[3]
    if python != sys.executable and not _open_to_others(str(src / "llm_foundry" / "__init__.py")):
        pytest.skip("without bubblewrap the run's own uid cannot reach this checkout")
    r = sandbox.run(SandboxSpec([python, "-c", "import llm_foundry.lab.testing as t; print(t.__name__)"], workspace,
                                env={"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin"}), layers=layers)
    assert r.outcome == "exited" and r.stdout == "llm_foundry.lab.testing\n", r.error or r.stderr[-1000:]


def test_an_interrupted_run_leaves_nothing_running(workspace):
    """Ctrl-C in the lab while a run is going on (the learner stops `foundry lab test`): the
    harness stops, and what the run started is killed with it, not left behind. Without bubblewrap,
    whose namespace dies with its parent anyway: the harness itself must do it."""
    layers = FULL - {"bubblewrap"}
    token = uuid.uuid4().hex
    code = (ATTACKS / "sleep_forever.py").read_text().replace("__TOKEN__", token)
    harness = (
        "import signal, sys\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)  # whatever the test runner left it as\n"
        "from llm_foundry.lab import sandbox\n"
        "from llm_foundry.lab.sandbox import Limits, SandboxSpec\n"
        f"sandbox.run(SandboxSpec([{_python(layers)!r}, '-c', {code!r}], sys.argv[1],\n"
        f"            env={{'PATH': '/usr/bin:/bin'}}, limits=Limits(wall_s=600)), layers={sorted(layers)!r})\n")
    proc = subprocess.Popen([sys.executable, "-c", harness, str(workspace)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    learner = lambda: [pid for pid in _processes_with(token) if pid != proc.pid]  # noqa: E731 (the harness's -c has it too)
    while not learner():  # the learner's code is running
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode()[-800:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert b"KeyboardInterrupt" in err
    deadline = time.monotonic() + 30
    while learner() and time.monotonic() < deadline:
        time.sleep(0.05)
    left = learner()
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert left == [], "an interrupted run left the learner's processes running"
