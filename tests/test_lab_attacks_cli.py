"""The sandbox attacks again, this time as a learner would mount them: the attack is the learner's
file of a module, and `foundry lab test 1 --json` runs it (the visible test imports the file, so the
attack runs at import, inside the real test run: runner, pytest, results.json and all).

``test_lab_sandbox.py`` runs the same attacks through ``sandbox.run`` in every configuration; this
file checks that the command a learner types gives the same guarantees, in the full configuration
(the suite) and with each layer off in turn through ``$FOUNDRY_LAB_SANDBOX_OFF`` (marker
``sandbox_matrix``, ``make test-sandbox``; a lost guarantee is stated, as there):

* contained: the run ends within 15 s (the module's wall clock is 6 s) and is not a pass;
* the harness is alive: this process, and a canary process of the lab's user;
* nothing the attack started is left running;
* nothing outside the workspace changed (a world-writable sentinel folder), and the reference
  answers, the progress database and a root-only file never show in what the learner gets back.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from lab_fixtures import SOLUTION, make_module
from llm_foundry.lab import sandbox
from test_lab_sandbox import CONFIGS, FULL, _landlock_abi, dangerous, lost

ATTACKS = Path(__file__).parent / "lab_attacks"
SRC = Path(__file__).resolve().parents[1] / "src"
CONTAINED_S = 15.0
SECRETS = ("reference-answer-secret", "progress-db-secret", "root-only-secret")


@pytest.fixture(scope="module")
def lab():
    """A lab home and one module (its limits: 6 s, 256 MiB, 32 processes) with a secret in its
    reference answer; a started workspace; a secret in the progress database; a root-only file."""
    top = Path(tempfile.mkdtemp(prefix="foundry-lab-attacks-"))
    os.chmod(top, 0o755)
    make_module(top / "modules", 1, solution=SOLUTION + "\n# reference-answer-secret\n",
                limits={"wall_s": 6.0, "memory_bytes": 256 << 20, "processes": 32, "file_bytes": 16 << 20})
    env = {**os.environ, "FOUNDRY_LAB_HOME": str(top / "home"), "FOUNDRY_LAB_MODULES": str(top / "modules"),
           "LANG": "en_US.UTF-8", "PYTHONPATH": str(SRC)}
    workspace = top / "ws"
    start = subprocess.run([sys.executable, "-m", "llm_foundry", "lab", "start", "1", "--dir", str(workspace)],
                           env=env, capture_output=True, text=True, timeout=120)
    assert start.returncode == 0, start.stderr
    note = subprocess.run([sys.executable, "-m", "llm_foundry", "lab", "note", "1", "progress-db-secret"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert note.returncode == 0, note.stderr
    (top / "root_only.txt").write_text("root-only-secret")
    os.chmod(top / "root_only.txt", 0o600)
    sentinel = top / "sentinel"
    sentinel.mkdir()
    (sentinel / "keep.txt").write_text("keep")
    os.chmod(sentinel, 0o777)
    os.chmod(sentinel / "keep.txt", 0o666)
    canary = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(10**6)"])
    yield {"top": top, "env": env, "workspace": workspace, "sentinel": sentinel, "canary": canary}
    canary.kill()
    canary.wait()
    shutil.rmtree(top, ignore_errors=True)


def _snapshot(folder: Path) -> list[tuple]:
    return sorted((p.name, p.read_bytes()) for p in folder.iterdir())


def _processes_with(token: str) -> list[int]:
    """Live processes whose command line or open learner file carries ``token``."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = Path(f"/proc/{entry.name}/environ").read_bytes()
            cmdline = Path(f"/proc/{entry.name}/cmdline").read_bytes()
            state = Path(f"/proc/{entry.name}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if (token.encode() in cmdline or token.encode() in environ) and state != "Z":
            found.append(int(entry.name))
    return found


@pytest.fixture(params=CONFIGS)
def layers(request) -> set[str]:
    """The layers of this configuration."""
    return set(FULL) if request.param == "full" else FULL - {request.param[3:]}


def attack(lab: dict, layers: set[str], name: str, secrets: tuple[str, ...] = (), **subs: str) -> dict:
    """Make attack ``name`` the learner's file, run `foundry lab test 1 --json`, assert the shared guarantees."""
    token = uuid.uuid4().hex
    code = (ATTACKS / f"{name}.py").read_text().replace("__TOKEN__", token)
    for key, value in subs.items():
        code = code.replace(f"__{key.upper()}__", value)
    # The token also goes into every process's environment: a process the attack starts (a daemon, a
    # forked child) inherits it, whatever its command line.
    (lab["workspace"] / "arith.py").write_text(f"import os\nos.environ['ATTACK_TOKEN'] = '{token}'\n" + code)
    before = _snapshot(lab["sentinel"])
    begun = time.monotonic()
    env = {**lab["env"], sandbox.OFF_VAR: ",".join(sorted(set(sandbox.LAYERS) - layers))}
    done = subprocess.run([sys.executable, "-m", "llm_foundry", "lab", "test", "1", "--json"], env=env,
                          capture_output=True, text=True, timeout=120)
    took = time.monotonic() - begun
    assert done.returncode == 1, done.stdout[-500:] + done.stderr[-500:]
    result = json.loads(done.stdout)
    assert result["status"] != "pass"
    assert result["duration_s"] < CONTAINED_S and took < CONTAINED_S + 30, (name, result["duration_s"], took)
    assert lab["canary"].poll() is None, f"{name} killed a process of the lab's user"
    assert result["sandbox"]["degraded"] == (layers != set(sandbox.LAYERS))
    deadline = time.monotonic() + 10  # the CLI has returned: the run's kill has been sent; let it land
    while _processes_with(token) and time.monotonic() < deadline:
        time.sleep(0.05)
    alive = _processes_with(token)
    if alive and lost(layers, {"cgroup", "uid", "bubblewrap"}, "that nothing of the run outlives it"):
        for pid in alive:  # the test cleans up what the sandbox could not
            os.kill(pid, 9)
    else:
        assert alive == [], f"{name} left processes running"
    if name == "write_outside" and lost(layers, {"bubblewrap", "landlock"}, "that only the workspace is writable"):
        shutil.rmtree(lab["sentinel"])
        lab["sentinel"].mkdir()
        (lab["sentinel"] / "keep.txt").write_text("keep")
        os.chmod(lab["sentinel"], 0o777)
        os.chmod(lab["sentinel"] / "keep.txt", 0o666)
    else:
        assert _snapshot(lab["sentinel"]) == before, f"{name} changed a folder outside its workspace"
    shown = done.stdout + done.stderr
    assert not any(secret in shown for secret in secrets), shown[-1000:]
    return result


@pytest.mark.parametrize("name", ["fork_bomb", "thread_bomb", "memory_bomb", "kill_everything", "fill_file"])
def test_dangerous_attacks(lab, layers, name):
    dangerous(layers)
    attack(lab, layers, name)


@pytest.mark.parametrize("name", ["huge_allocation", "cpu_loop", "sleep_forever", "ignore_sigterm", "exhaust_fds",
                                  "big_output", "read_stdin", "daemon"])
def test_attacks_on_processes_and_resources(lab, layers, name):
    result = attack(lab, layers, name)
    if name in ("sleep_forever", "cpu_loop", "ignore_sigterm"):
        assert "stopped" in result["message"] or "time limit" in result["message"], result["message"]


def test_killing_the_parent_and_dangerous_system_calls(lab, layers):
    if not layers & ({"uid", "bubblewrap"} | ({"landlock"} if _landlock_abi() >= 6 else set())):
        pytest.skip("unsafe here: without the run's own uid, bubblewrap or Landlock's signal scope, "
                    "the parent is the harness")
    attack(lab, layers, "kill_parent")
    if layers & {"uid", "bubblewrap"}:
        attack(lab, layers, "syscalls")


def test_reading_the_reference_answers_and_the_progress_database(lab, layers):
    hidden = () if lost(layers, {"bubblewrap", "landlock"}, "that the reference answers and progress are hidden") \
        else ("reference-answer-secret", "progress-db-secret")
    module = lab["top"] / "modules" / "01_arith" / "solution" / "arith.py"
    testing = str(SRC / "llm_foundry" / "lab" / "testing.py")
    attack(lab, layers, "read_hidden", hidden, path=str(module), visible=testing)
    attack(lab, layers, "read_hidden", hidden, path=str(lab["top"] / "home" / "progress.db"), visible=testing)
    attack(lab, layers, "read_file", path="/etc/shadow")
    if os.geteuid() == 0:
        root_only = () if lost(layers, {"uid"}, "that root's files are closed") else ("root-only-secret",)
        attack(lab, layers, "read_file", root_only, path=str(lab["top"] / "root_only.txt"))


def test_writing_outside_the_workspace_and_a_results_link(lab, layers):
    attack(lab, layers, "write_outside", target=str(lab["sentinel"]))
    attack(lab, layers, "results_link", SECRETS, path=str(lab["top"] / "root_only.txt"))


def test_connecting_to_a_loopback_port(lab, layers):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.setblocking(False)
        attack(lab, layers, "connect_tcp", port=str(server.getsockname()[1]))
        if not lost(layers, {"seccomp", "bubblewrap"} | ({"landlock"} if _landlock_abi() >= 4 else set()),
                    "that learner code cannot reach the lab's network"):
            with pytest.raises(BlockingIOError):
                server.accept()  # nothing from the run reached the lab's port
