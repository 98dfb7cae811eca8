# Set-up is idempotent: `.venv` is created once, torch is the local CPU build (never CUDA wheels).
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
TORCH  := torch==2.13.0

.PHONY: setup quickstart demo test test-slow bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

# The main job of the README quick start.
quickstart: setup
	WANDB_MODE=$${WANDB_MODE:-offline} $(PY) scripts/quickstart.py

test: setup
	$(PY) -m pytest -q

test-slow: setup
	$(PY) -m pytest -q -m slow

bench: setup
	$(PY) scripts/benchmark.py

clean:
	rm -rf $(VENV) runs wandb .pytest_cache
