# Two entry points for a fresh machine (both idempotent):
#   make demo   set up, then run the main job on the packaged model
#   make test   set up, then run the test suite
PY ?= python3
# --system-site-packages: a machine that already has torch (a GPU box) keeps its own build;
# `make test VENV_FLAGS=` builds an isolated environment instead (what a bare machine gets)
VENV_FLAGS ?= --system-site-packages
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test lint

$(BIN)/python:
	$(PY) -m venv $(VENV_FLAGS) $(VENV)

$(VENV)/.installed: $(BIN)/python pyproject.toml
	# torch first, pinned to the CPU build: an unpinned torch pulls gigabytes of CUDA wheels
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "torch==2.13.0"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	bash scripts/demo.sh $(BIN)/kvfp

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/python -m ruff check kvfp tests benchmarks
