# Set-up is idempotent: `.venv` is created once, torch is the local CPU build (never CUDA wheels).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
TORCH  := torch==2.13.0

.PHONY: setup quickstart garo_general hybrid_general lint test test-slow bench docs clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[dev,bench]"
	touch $(STAMP)

# The main job of the README quick start: a short GARO meta-training (W&B offline unless
# WANDB_MODE says otherwise), then the held-out evaluation table. Re-running resumes runs/garo.
quickstart: setup
	WANDB_MODE=$${WANDB_MODE:-offline} $(PY) -m scripts.meta_train --config configs/garo.yaml

# garo_general's recipe from scratch, one command (the shipped weights are one draw of it:
# README): meta-training (configs/garo_general.yaml, resumable), then the validation-best
# snapshot by the benchmark's protocol, copied to runs/garo_general/selected.safetensors
# (configs/select_garo_general.yaml).
garo_general: setup
	WANDB_MODE=$${WANDB_MODE:-offline} $(PY) -m scripts.meta_train --config configs/garo_general.yaml
	$(PY) -m scripts.select_checkpoint runs/garo_general --config configs/select_garo_general.yaml

# The shipped hybrid_general the same way: the switch trained over garo_general's fixed
# controller (configs/hybrid_general.yaml), then the validation-best snapshot, counted per
# gradient evaluation, copied to runs/hybrid_general/selected.safetensors.
hybrid_general: setup
	WANDB_MODE=$${WANDB_MODE:-offline} $(PY) -m scripts.meta_train --config configs/hybrid_general.yaml
	$(PY) -m scripts.select_checkpoint runs/hybrid_general --config configs/select_garo_general.yaml

# ruff with the rule set of pyproject.toml ([tool.ruff.lint]); CI runs it before the tests.
lint: setup
	$(VENV)/bin/ruff check .

# pytest exits 5 when it collected nothing: say so and fail.
test: setup
	@$(PY) -m pytest -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: no tests ran" >&2; exit 1; fi; exit $$rc

test-slow: setup
	$(PY) -m pytest -q -m slow

bench: setup
	$(PY) -m scripts.benchmark

# The documentation site (mkdocs.yml, docs/): the `docs` extra, then a strict build into site/
# (any warning, e.g. a broken link or an unparsable docstring, fails it).
DOCS_STAMP := $(VENV)/.docs-installed
$(DOCS_STAMP): pyproject.toml $(STAMP)
	$(PY) -m pip install --quiet -e ".[docs]"
	touch $(DOCS_STAMP)

docs: setup $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) runs wandb .pytest_cache site
