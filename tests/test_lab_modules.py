"""The authoring check of every module that ships with the Lab (as rustlings' ``dev check``).

One test per module, collected from ``lab/modules/`` (whatever modules exist): its source is
whole (a fast test), and the full check passes (a slow one: the reference passes 3 runs of 3, the
stub fails on assertions and passes no test, every bug variant fails with its own message, and
``return 0`` / ``pass`` / the input returned pass no test). ``foundry lab check`` runs the same.
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


@pytest.mark.slow
@pytest.mark.parametrize("module", MODULES, ids=[m.name for m in MODULES])
def test_module_passes_the_authoring_check(module):
    findings = check_module(module)
    bad = [f"{f.check}: {f.detail}" for f in findings if not f.ok]
    assert not bad, "\n".join(bad)
