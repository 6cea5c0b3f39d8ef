"""The authoring check of every module that ships with the Lab (as rustlings' ``dev check``).

One test per module, collected from ``lab/modules/`` (whatever modules exist): its source is
whole (a fast test), and the check passes (a slow one: the stub fails on assertions and passes no
test, every bug variant fails with its own message, and ``return 0`` / ``pass`` / the input returned
pass no test). Its reference runs are left to ``tests/test_lab_walk.py``, which runs every module's
reference once, through ``foundry lab test`` as a learner would, and holds it to the same time bound.
``foundry lab check`` runs the whole check with 3 reference runs, to catch a flaky test; so does
``make test-trials`` (the test marked ``trials``).
"""

from __future__ import annotations

import pytest

from llm_foundry.lab.check import check_module, check_source
from llm_foundry.lab.module import MODULES_DIR, all_modules

MODULES = all_modules(MODULES_DIR)


@pytest.fixture(autouse=True)
def _own_lab_home(tmp_path, monkeypatch):
    # the check's runs write no progress, but a learner's own $FOUNDRY_LAB_HOME must not even be read
    monkeypatch.setenv("FOUNDRY_LAB_HOME", str(tmp_path / "lab-home"))
    monkeypatch.delenv("FOUNDRY_LAB_MODULES", raising=False)


def test_module_numbers_are_unique_and_name_their_folders():
    numbers = [m.number for m in MODULES]
    assert len(set(numbers)) == len(numbers), numbers
    assert all(m.name == f"{m.number:02d}_{m.slug}" for m in MODULES), [m.name for m in MODULES]


@pytest.mark.parametrize("module", MODULES, ids=[m.name for m in MODULES])
def test_module_source_is_whole(module):
    assert check_source(module) == []


def _check_passes(module, reference_runs: int) -> None:
    findings = check_module(module, reference_runs=reference_runs)
    bad = [f"{f.check}: {f.detail}" for f in findings if not f.ok]
    assert not bad, "\n".join(bad)


# One class per module (TestModule01_welcome::test_passes_the_authoring_check, ...): under
# `make test`'s `--dist loadscope` a class is a unit of work of its own, so the two workers share
# the modules' checks (about a minute of sandboxed runs each) while every other file stays one unit.
def _check_class(module) -> type:
    @pytest.mark.slow
    def test_passes_the_authoring_check(self):
        _check_passes(module, reference_runs=0)  # the walk runs the reference (tests/test_lab_walk.py)

    name = f"TestModule{module.name}"
    return type(name, (), {"test_passes_the_authoring_check": test_passes_the_authoring_check,
                           "__doc__": f"The authoring check of module {module.name}."})


for _module in MODULES:
    globals()[f"TestModule{_module.name}"] = _check_class(_module)


@pytest.mark.trials
@pytest.mark.parametrize("module", MODULES, ids=[m.name for m in MODULES])
def test_passes_the_authors_check_with_three_reference_runs(module):
    _check_passes(module, reference_runs=3)
