# One-line set-up: `make test` (environment + tests) and `make demo` (environment + demo).
PY ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
# The CPU build of torch: pinned here, in the install path, not in the package metadata.
TORCH ?= torch==2.13.0

.PHONY: env test test-all demo docs lint gpu-check clean

# What the demo needs (atbsn, BM3D, the RAW / HEIC / video readers); the tests add the dev tools on top.
$(BIN)/atbsn: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[baselines,formats]"
	touch $(BIN)/atbsn

$(VENV)/.dev: $(BIN)/atbsn
	$(BIN)/pip install -q -e ".[dev]"
	touch $(VENV)/.dev

env: $(VENV)/.dev

test: env
	$(BIN)/python -m pytest -q

test-all: env
	$(BIN)/python -m pytest -q -m ""

demo: $(BIN)/atbsn
	$(BIN)/atbsn demo

# On a GPU machine: CUDA tests, CUDA benchmarks, DDP over every GPU; one report (benchmarks/results/gpu_check.md)
gpu-check: env
	$(BIN)/python benchmarks/gpu_check.py

# The documentation site (README + docs/) in build/site; --strict: a broken link or page fails
docs: $(BIN)/atbsn
	$(BIN)/pip install -q -e ".[docs]"
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict -q

lint: env
	$(BIN)/ruff check src tests benchmarks docs_hooks.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
