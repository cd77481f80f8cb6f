# Two commands for a fresh machine: `make run` and `make test`. Each builds .venv from nothing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.local-installed: $(BIN)/python requirements.txt requirements-local.txt
	$(BIN)/python -m pip install --quiet -r requirements-local.txt
	touch $@

$(VENV)/.dev-installed: $(VENV)/.local-installed requirements-dev.txt
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	touch $@

run: $(VENV)/.local-installed
	test -f local.settings.json || cp local.settings.example.json local.settings.json
	$(BIN)/python -m bridges serve

test: $(VENV)/.dev-installed
	$(BIN)/ruff check bridges
	$(BIN)/mypy
	bash scripts/install-peers.sh
	$(BIN)/python -m pytest -q

bench: $(VENV)/.dev-installed
	$(BIN)/python benchmarks/bench_ingest.py
	$(BIN)/python benchmarks/bench_import.py
	$(BIN)/python benchmarks/bench_sinks.py
	$(BIN)/python benchmarks/bench_inputs.py
	$(BIN)/python benchmarks/bench_retry.py
	$(BIN)/python benchmarks/bench_checks.py
	$(BIN)/python benchmarks/bench_hostile.py
	$(BIN)/python benchmarks/bench_queued.py
	$(BIN)/python benchmarks/bench_routing.py

clean:
	rm -rf $(VENV) .bridge .peers .pytest_cache .hypothesis .ruff_cache .mypy_cache
