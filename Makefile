# The README's quick start: `make demo` and `make test`. Each creates .venv if missing.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast test-deep install compiler tools manifests grpc bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# The one install step (the Dockerfile runs the same command). It also builds the dataset
# package's C extension (setup.py), so a C compiler and Python's and zlib's headers come
# first: from Debian's packages when missing and root or sudo can install them (without them
# the install goes on, the same work is done in Python, and the test that the extension is
# built fails). A build left by older sources is removed first, never used.
NATIVE := setup.py $(wildcard dataset/_native*.c dataset/_native*.h)
$(STAMP): $(BIN)/python pyproject.toml scripts/install.sh scripts/apt-missing.sh $(NATIVE)
	@$(MAKE) --no-print-directory compiler
	rm -f dataset/_native*.so
	sh scripts/install.sh $(BIN)/pip -e '.[test]'
	touch $(STAMP)

compiler: $(BIN)/python
	@missing=""; \
	command -v cc >/dev/null 2>&1 || missing="$$missing gcc libc6-dev"; \
	$(BIN)/python -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
	  || missing="$$missing $$($(BIN)/python -c 'import sys; print("python%d.%d-dev" % sys.version_info[:2])')"; \
	[ -f /usr/include/zlib.h ] || missing="$$missing zlib1g-dev"; \
	sh scripts/apt-missing.sh optional "without them the C extension is not built" $$missing

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/retrain demo

# Test processes in parallel (pytest-xdist): each has its own Redis and temp folders (with
# RETRAIN_REDIS_URL, worker N uses, and flushes, database N+1 of that server); each test file
# runs whole in one process, in order (the dashboard's tests share one stack, read then changed).
TEST_WORKERS ?= 2
XDIST := -n $(TEST_WORKERS) --dist loadfile

# The whole suite; it ends with its slowest tests, so a new slow one is seen when it arrives.
test: $(STAMP) tools
	$(BIN)/python -m pytest $(XDIST) --durations=15

# System tools the tests use for real: kubectl (the manifests' cross-check with the real
# kustomize) and Chromium with its WebDriver (the dashboard's browser tests), from Debian's
# packages when missing and root or sudo can install them.
tools:
	@missing=""; \
	command -v kubectl >/dev/null 2>&1 || missing="$$missing kubernetes-client"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v chromedriver >/dev/null 2>&1 || missing="$$missing chromium-driver"; \
	sh scripts/apt-missing.sh required "the tests run them" $$missing

test-fast: $(STAMP)
	$(BIN)/python -m pytest $(XDIST) -m "not integration and not slow"

# The whole suite with every property test at its full example count (400, not 60).
test-deep: $(STAMP) tools
	$(BIN)/python -m pytest $(XDIST) --durations=15 --hypothesis-profile=deep

# Regenerate the committed manifests from their generators (tests check they are current).
manifests: $(STAMP)
	$(BIN)/retrain workflow render --image dev.local/retrain:dev --out manifests/overlays/local/workflowtemplate.yaml
	$(BIN)/retrain workflow render --image ghcr.io/retrain-dev/retrain:0.1.0 --out manifests/overlays/production/workflowtemplate.yaml

# Regenerate the model server's gRPC descriptors from its .proto, after an edit of it (a test
# checks the committed services/serving/grpc_predict_v2_descriptors.py is current).
grpc: $(STAMP)
	$(BIN)/python -m services.serving.grpc_codegen services/serving

# Side-by-side measurements; each prints its ratios (see benchmarks/README.md).
bench: $(STAMP)
	$(BIN)/python benchmarks/bench_cache.py
	$(BIN)/python benchmarks/bench_training.py
	$(BIN)/python benchmarks/bench_training_cache.py
	$(BIN)/python benchmarks/bench_serving.py
	$(BIN)/python benchmarks/bench_reliability.py
	$(BIN)/python benchmarks/bench_events.py
	$(BIN)/python benchmarks/bench_ui.py
	$(BIN)/python benchmarks/bench_validation.py
	$(BIN)/python benchmarks/bench_guard.py

clean:
	rm -rf $(VENV) .retrain .pytest_cache build dataset/_native*.so
