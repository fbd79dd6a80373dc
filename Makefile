# The README's quick start: `make demo` and `make test`. Each creates .venv if missing.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast install manifests bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# The one install step (the Dockerfile runs the same command).
$(STAMP): $(BIN)/python pyproject.toml scripts/install.sh
	sh scripts/install.sh $(BIN)/pip -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/retrain demo

test: $(STAMP)
	$(BIN)/python -m pytest

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not integration and not slow"

# Regenerate the committed manifests from their generators (tests check they are current).
manifests: $(STAMP)
	$(BIN)/retrain workflow render --image retrain:dev --out manifests/overlays/local/workflowtemplate.yaml
	$(BIN)/retrain workflow render --image ghcr.io/retrain-dev/retrain:0.1.0 --out manifests/overlays/production/workflowtemplate.yaml

# Side-by-side measurements; each prints its ratios (see benchmarks/README.md).
bench: $(STAMP)
	$(BIN)/python benchmarks/bench_cache.py
	$(BIN)/python benchmarks/bench_training.py
	$(BIN)/python benchmarks/bench_serving.py

clean:
	rm -rf $(VENV) .retrain .pytest_cache
