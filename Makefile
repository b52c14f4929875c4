# coop-infra: the commands the README names. Each one does its own set-up first.
#   make test    install what the tests need, then run the whole suite
#   make test-fast  lint, then the tests that start no service and need no lab (5-11 minutes)
#   make demo    install what the lab needs, bring it up, then push to live on it twice
#   make lab     install what the lab needs, then bring it up (infra lab up; infra lab down)
#   make dev     the Dagster UI on http://127.0.0.1:$(DEV_PORT)
#   make bench   the benchmarks (figures in the README)
#   make snapshot  write the asset graph's snapshot (tests/snapshots/asset_graph.yaml) anew
SHELL := /bin/bash
.DEFAULT_GOAL := help

# One Dagster instance for the repo: dagster.yaml here, its storage in .dagster/ (gitignored).
export DAGSTER_HOME := $(CURDIR)
export UV_PYTHON_DOWNLOADS := never
# The site `make demo` and `make dev` work on; the co-op's own is topology.yaml.
TOPOLOGY ?= topology.lab.yaml
DEV_PORT ?= 3000
UV = $(shell command -v uv 2>/dev/null || { test -x .tools/bin/uv && echo .tools/bin/uv; } || echo python3 -m uv)
RUN = $(UV) run --locked --no-sync

.PHONY: help setup test test-fast lint demo lab dev bench snapshot

help:
	@sed -n 's/^#   //p' Makefile

setup:
	@scripts/setup

lint: setup
	$(RUN) ruff check .
	$(RUN) ruff format --check .
	$(RUN) lint-imports

# --durations: the slowest tests, at the end of the run (the README's figures come from it).
test: setup lint
	$(RUN) pytest --durations=20

test-fast: setup lint
	$(RUN) pytest -m "not lab and not slow"

demo: setup
	@INFRA_TOPOLOGY=$(TOPOLOGY) $(RUN) infra demo

lab: setup
	@$(RUN) infra lab up

# `dagster dev`, or only the webserver when `make demo`'s daemon runs (one daemon per instance).
dev: setup
	@echo "Dagster UI: http://127.0.0.1:$(DEV_PORT)  (topology: $(TOPOLOGY); Ctrl-C stops it)"
	INFRA_TOPOLOGY=$(TOPOLOGY) $(RUN) infra dev --port $(DEV_PORT)

bench: setup
	$(RUN) python -m benchmarks

# The only writer of the snapshot tests/test_asset_graph.py compares the graph with.
snapshot: setup
	$(RUN) python scripts/asset_graph.py --write
