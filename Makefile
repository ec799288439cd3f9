# Two commands for a fresh machine: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint test-worker test-node bench clean

$(STAMP): worker/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e 'worker[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/role-injector serve --host 127.0.0.1 --port 8000 --roles roles

lint: $(STAMP)
	$(BIN)/ruff check
	$(BIN)/role-injector lint roles

test-worker: $(STAMP)
	$(BIN)/pytest tests/worker

test-node: $(STAMP)
	bash scripts/test-n8n-node.sh

# Everything: lint, the n8n node (lint, build, tests), then all Python tests incl. the e2e suite.
test: lint test-node
	$(BIN)/pytest

bench: $(STAMP)
	$(BIN)/python bench/fit_bench.py

clean:
	rm -rf $(VENV)
