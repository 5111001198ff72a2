# Every target sets up what it needs: a fresh Debian machine (root, no Docker engine running)
# needs nothing but `make test` or `make demo`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: all protos engines bytecode test demo bench lint format clean

all: test

# The virtual environment, rebuilt when pyproject.toml changes.
$(STAMP): pyproject.toml
	@$(PYTHON) -m venv --help >/dev/null 2>&1 && $(PYTHON) -c 'import ensurepip' 2>/dev/null || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

# containerd's gRPC stubs, generated from our .proto subset (git-ignored).
CONTAINERD_API := packcache/transports/containerd_api
PROTO_STAMP := $(CONTAINERD_API)/.generated
$(PROTO_STAMP): $(STAMP) $(wildcard $(CONTAINERD_API)/*.proto) tests/generate_containerd_api.py
	$(BIN)/python tests/generate_containerd_api.py
	touch $@

protos: $(PROTO_STAMP)

# Private Docker engines (20.10, 26.1 and 28) and a container registry for the tests, fetched
# from Debian's archive into .engines/ (no install).
engines: $(STAMP) $(PROTO_STAMP)
	@command -v tmux >/dev/null || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tmux; }  # the terminal tests
	$(BIN)/python -m tests.engines.provision
	$(BIN)/python -m tests.registries.provision

test: $(STAMP) $(PROTO_STAMP) engines
	$(BIN)/ruff check packcache migrations tests
	$(BIN)/python -m pytest -q

# What is timed gets the bytecode a wheel install has: an editable install under
# PYTHONDONTWRITEBYTECODE would compile packcache again on every command.
bytecode: $(STAMP) $(PROTO_STAMP)
	$(BIN)/python -m compileall -q packcache migrations

demo: $(STAMP) engines bytecode
	$(BIN)/python -m tests.demo

# Writes each bench's tables into docs/benchmarks.md. BENCH=rebase,builder runs a subset (of
# index_scale, ingest, engines, rebase, builder); BENCH_SIZE=quick uses smaller images.
BENCH ?=
BENCH_SIZE ?= full
bench: $(STAMP) engines bytecode
	$(BIN)/python -m tests.bench --only '$(BENCH)' --size '$(BENCH_SIZE)'

lint: $(STAMP)
	$(BIN)/ruff check packcache migrations tests
	$(BIN)/ruff format --check packcache migrations tests

format: $(STAMP)
	$(BIN)/ruff format packcache migrations tests
	$(BIN)/ruff check --fix packcache migrations tests

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
