# The README's two set-up commands: `make demo` (the main job) and `make test`.
# Both install what they need first; torch is pinned to the local CPU build.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip

.PHONY: install demo test

install:
	$(PIP) install -qq torch==2.13.0
	$(PIP) install -qq -e ".[test,hf]"

demo: install
	$(PYTHON) -m llm_foundry speedrun --preset demo

test: install
	$(PYTHON) -m pytest -q
