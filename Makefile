# The README's set-up commands. Each installs what it needs, then runs.
#
# Everything goes into a virtual environment: the active one when there is one
# ($VIRTUAL_ENV), otherwise a project .venv made here on first use. Debian's and
# Ubuntu's system Python refuse `pip install` outside one (PEP 668).
PYTHON3 ?= python3
VENV ?= $(or $(VIRTUAL_ENV),.venv)
PYTHON := $(VENV)/bin/python
PIP := $(PYTHON) -m pip
TORCH_CPU ?= torch==2.13.0

.PHONY: demo test test-fast test-trials test-sandbox torch

# the main job: the whole chat pipeline on built-in data (only the package's own dependencies)
demo: torch
	$(PIP) install -qq -e .
	$(PYTHON) -m llm_foundry speedrun --preset demo

# the layer contract (pyproject.toml [tool.importlinter]), then the whole test suite, one test file
# per core at a time (pytest-xdist's loadscope: a file's module-scoped fixtures are built once; the
# test classes, which only tests/test_lab_modules.py has, one per Lab module, are units of their own),
# in the order tests/conftest.py gives (the longest first), not xdist's (the files with most tests first)
test: torch
	$(PIP) install -qq -e ".[test,hf]"
	$(VENV)/bin/lint-imports
	$(PYTHON) -m pytest -q -n auto --dist loadscope --no-loadscope-reorder -m "not trials and not sandbox_matrix"

# the same without the long end-to-end runs (tests marked `slow`): a few minutes
test-fast: torch
	$(PIP) install -qq -e ".[test,hf]"
	$(VENV)/bin/lint-imports
	$(PYTHON) -m pytest -q -m "not slow and not trials and not sandbox_matrix"

# the long acceptance runs: many-trial faults (kill -9 at random instants of train, evolve and
# online), the online forgetting run over a whole file, LoRA against full fine-tuning — too long
# for every test run
test-trials: torch
	$(PIP) install -qq -e ".[test,hf]"
	$(PYTHON) -m pytest -q -m trials

# the Lab's sandbox attacks in every degraded configuration (each layer off in turn; the full
# configuration is in `make test`): docs/en/lab-sandbox.md
test-sandbox: torch
	$(PIP) install -qq -e ".[test,hf]"
	$(PYTHON) -m pytest -q tests/test_lab_sandbox.py -m sandbox_matrix

$(PYTHON):
	$(PYTHON3) -m venv $(VENV)

# A torch that imports (a CUDA or ROCm build the user installed) is kept; only when there is
# none is the CPU build installed, since a bare `pip install torch` pulls the multi-gigabyte
# CUDA build. pyproject.toml's floor still upgrades one that is too old.
torch: $(PYTHON)
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install -qq $(TORCH_CPU)
