# `make demo` needs Python 3.11; `make test` needs Python 3.11 and Node.js >= 20.
# Each target creates .venv and installs what it needs when missing.

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP_DEMO := $(VENV)/.installed-demo
STAMP_TEST := $(VENV)/.installed-test
STAMP_BENCH := $(VENV)/.installed-bench

.PHONY: demo test lint typecheck pytest bench clean tools

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP_DEMO): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[emulator]'
	touch $@

$(STAMP_TEST): pyproject.toml Makefile | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[emulator,operator,test,bench]'
	touch $@

$(STAMP_BENCH): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[emulator,bench]'
	touch $@

demo: $(STAMP_DEMO)
	$(BIN)/anomaly-pipeline demo

tools: $(STAMP_TEST)
	$(BIN)/python -m tests.tools.install

lint: $(STAMP_TEST)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP_TEST)
	$(BIN)/mypy

pytest: $(STAMP_TEST) tools
	$(BIN)/pytest

test: lint typecheck pytest

# The full benchmark; docs/benchmarks.md says what it measures. `make test` runs only its smoke test.
bench: $(STAMP_BENCH) tools
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .tools .mypy_cache .ruff_cache .pytest_cache
