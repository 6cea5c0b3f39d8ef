"""A new learner's whole path through the Lab, with `foundry lab` alone (issue 24's acceptance).

For each shipped module in order, in a real child process (`python -m llm_foundry lab ...`) with a
fresh `FOUNDRY_LAB_HOME`: start it into a workspace, write the reference answer into the learner's
files (`Module.reference`), test it in the sandbox (it must pass), answer the reflection from a
file, and see the next module unlocked; at the end `foundry lab status` shows every module done.
From module 7 on, a module's tests import the learner's files of earlier modules (`builds_on`):
here those are the workspaces written on the way, so the walk also runs the whole chain — by
module 16 the learner's own files train and serve a chat model.

It walks whatever modules ship, from 1 up to the first gap in the numbers (a module after a gap
cannot be unlocked: the one before it does not exist). A module that needs sandbox layers this
machine lacks (`requires_layers`) is skipped with `foundry lab skip`, as a learner would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llm_foundry.lab.check import REFERENCE_S
from llm_foundry.lab.module import MODULES_DIR, all_modules
from llm_foundry.lab.progress import Progress
from llm_foundry.lab.sandbox import probe

SRC = Path(__file__).resolve().parents[1] / "src"


def walkable() -> list:
    """The shipped modules 1, 2, 3, … up to the first gap in the numbers."""
    out = []
    for m in all_modules(MODULES_DIR):
        if m.number != len(out) + 1:
            break
        out.append(m)
    return out


@pytest.mark.slow
def test_a_new_learner_walks_every_module_with_foundry_lab_alone(tmp_path):
    modules = walkable()
    assert modules, "no module 1 ships with the Lab"
    env = {k: v for k, v in os.environ.items() if k != "FOUNDRY_LAB_MODULES"}
    env.update(PYTHONPATH=str(SRC), FOUNDRY_LAB_HOME=str(tmp_path / "home"), LANG="en_US.UTF-8", COLUMNS="200")

    def lab(*args: object) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "llm_foundry", "lab", *map(str, args)], env=env,
                              capture_output=True, text=True, timeout=300)

    layers = probe()
    skipped = []
    for i, module in enumerate(modules):
        n, ws = module.number, tmp_path / "ws" / module.name
        r = lab("start", n, "--dir", ws)
        assert r.returncode == 0, f"start {n}: {r.stdout}{r.stderr}"
        assert all((ws / f).is_file() for f in module.files), f"start {n} wrote no {module.files} in {ws}"
        if any(layers.get(layer) != "on" for layer in module.requires_layers):
            r = lab("skip", n)  # this machine cannot give the module the sandbox it requires
            assert r.returncode == 0, f"skip {n}: {r.stdout}{r.stderr}"
            skipped.append(n)
        else:
            for f in module.files:  # the learner's answer: the reference, as a learner would write it
                (ws / f).write_text(module.reference(f), encoding="utf-8")
            r = lab("test", n, "--json")
            assert r.returncode == 0, f"test {n} on the reference: {r.stdout[-3000:]}{r.stderr[-2000:]}"
            results = json.loads(r.stdout)
            assert results["status"] == "pass" and results["tests"], f"test {n}: {results['message']}"
            # the authoring check's bound on a reference run (the suite's per-module checks leave their
            # reference runs to this walk: tests/test_lab_modules.py)
            assert results["duration_s"] < REFERENCE_S, f"test {n}: the reference took {results['duration_s']} s"
            answers = tmp_path / f"answers-{n}.json"
            answers.write_text(json.dumps([f"My answer to question {k + 1}." for k in range(len(module.reflection))]),
                               encoding="utf-8")
            r = lab("reflect", n, "--answers", answers)
            assert r.returncode == 0, f"reflect {n}: {r.stdout}{r.stderr}"
            assert module.reflection[0]["answer"]["en"].split()[0] in r.stdout, f"reflect {n} shows no model answer"
        if i + 1 < len(modules):
            r = lab("start", n + 1, "--dir", tmp_path / "ws" / modules[i + 1].name)
            assert r.returncode == 0, f"module {n + 1} is not unlocked after module {n}: {r.stdout}{r.stderr}"

    r = lab("status")
    assert r.returncode == 0, r.stderr
    rows = {int(key): line for line in r.stdout.splitlines()
            if (key := line.lstrip("│┃| ").split(" ", 1)[0]).isdigit()}
    assert all(m.number in rows for m in modules), r.stdout
    with Progress.open(tmp_path / "home") as progress:
        for m in modules:
            state = progress.state(m.number)
            assert (state.skipped if m.number in skipped else state.done), f"module {m.number}: {state}"
    for m in modules:
        want = "skipped" if m.number in skipped else "done"
        assert want in rows[m.number], f"status row of module {m.number}: {rows[m.number]}"
