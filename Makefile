# PatternAlarm. `make help` lists the targets; each bootstraps what it needs.
SHELL := /bin/bash
VENV  := .venv
BIN   := $(VENV)/bin
PYTEST_ARGS ?=

.DEFAULT_GOAL := help

.PHONY: help
help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  make %-10s %s\n", $$1, $$2}'

.PHONY: setup
setup: ## build .venv from constraints.txt, extract the broker, check Java
	@bash scripts/setup.sh

.PHONY: up
up: setup ## start the embedded services (idempotent) and wait until healthy
	@$(BIN)/patternalarm up

.PHONY: down
down: ## stop every embedded service
	@if [ -x $(BIN)/patternalarm ]; then $(BIN)/patternalarm down; fi

.PHONY: status
status: ## health, pid, memory and URL of each service
	@$(BIN)/patternalarm status

.PHONY: demo
demo: setup ## whole pipeline: services, bootstrap models, stream, NORMAL traffic; prints URLs
	@$(BIN)/patternalarm demo

.PHONY: test
test: setup ## all tests: unit, DAG integrity, integration on real services
	@$(BIN)/pytest $(PYTEST_ARGS)

.PHONY: test-unit
test-unit: setup ## fast tests only (no services)
	@$(BIN)/pytest -m "not integration" $(PYTEST_ARGS)

.PHONY: lint
lint: setup ## ruff
	@$(BIN)/ruff check .

.PHONY: bench
bench: up ## run the benchmarks under benchmarks/ on the embedded stack, all but the hour-long soak
	@set -e; for script in benchmarks/*.py; do [ "$$script" = benchmarks/soak.py ] && continue; \
	  echo "== $$script"; $(BIN)/python $$script; done

.PHONY: soak
soak: up ## one hour of CRISIS traffic through the stream, measured per 5-minute slice
	@$(BIN)/python benchmarks/soak.py

.PHONY: clean
clean: down ## stop services and delete var/ (all local data)
	rm -rf var
