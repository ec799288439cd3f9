# Two commands for a fresh machine: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run run-scale test lint engine test-worker test-node test-e2e test-browser docs-screenshots bench clean

$(STAMP): worker/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e 'worker[test]'
	touch $(STAMP)

# The worker on 127.0.0.1:8000 and n8n on localhost:5678 with the node and the samples; Ctrl-C stops both.
run: $(STAMP)
	bash scripts/run-local.sh

# Two llama-servers behind vllm-router, the worker in front of the router (docs/scaling.md); Ctrl-C stops all.
run-scale: $(STAMP)
	bash scripts/run-scale.sh

lint: $(STAMP)
	$(BIN)/ruff check
	$(BIN)/role-injector lint roles

test-worker: $(STAMP)
	$(BIN)/pytest tests/worker

test-node: $(STAMP)
	bash scripts/test-n8n-node.sh

# A real engine and model for the tests: llama.cpp's tools built once into the tools folder, SmolLM2-135M.
engine:
	bash scripts/engine-toolchain.sh install >/dev/null

# Everything: lint, the n8n node (lint, build, tests), then all Python tests incl. the e2e suite.
test: lint test-node engine
	$(BIN)/pytest --durations=10

# A real n8n with the packed node (one per session): the e2e and the browser tests.
test-e2e: $(STAMP)
	$(BIN)/pytest -m e2e

# The n8n editor in a headless Chromium (scripts/install-chromium.sh provides it).
test-browser: $(STAMP)
	$(BIN)/pytest -m browser

# Takes the README's screenshots (docs/images/: the editor and the role studio) again.
docs-screenshots: $(STAMP)
	ROLE_INJECTOR_SCREENSHOTS=1 $(BIN)/pytest tests/browser

bench: $(STAMP) engine
	$(BIN)/python -m bench.fit_bench
	$(BIN)/python -m bench.inject_bench
	$(BIN)/python -m bench.proxy_bench
	$(BIN)/python -m bench.prefix_bench
	$(BIN)/python -m bench.relevance_bench
	$(BIN)/python -m bench.relevance_quality
	$(BIN)/python -m bench.connections_bench
	$(BIN)/python -m bench.engine_tokens_bench
	$(BIN)/python -m bench.bake_bench
	$(BIN)/python -m bench.roles_bench
	$(BIN)/python -m bench.engine_bench
	$(BIN)/python -m bench.routing_bench

clean:
	rm -rf $(VENV)
