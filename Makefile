# Two commands do all the set-up on a fresh machine:
#   make demo   creates .venv, installs, runs the main job on embedded defaults
#   make test   creates .venv if needed, installs, runs the whole suite
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install system-deps demo test lint bench bench-fleet reliability clean

# Debian packages, installed only when their program is missing (program:package). The local fleet
# (`shepherd fleet up`) runs HAProxy and Prometheus; the console's browser tests (tests/test_console.py)
# drive Chromium headless through chromedriver. A policy-rc.d that denies starting services is put in
# place for the install (and removed after, if we put it there), so the packages leave no service running.
SYSTEM_TOOLS := haproxy:haproxy prometheus:prometheus chromium:chromium chromedriver:chromium-driver
POLICY_RC    := /usr/sbin/policy-rc.d

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/pip install --quiet -e '.[builders,triton,examples,test]'
	touch $(STAMP)

install: $(STAMP)

system-deps:
	@missing=""; for pair in $(SYSTEM_TOOLS); do tool=$${pair%%:*}; package=$${pair#*:}; \
	  command -v $$tool >/dev/null 2>&1 || [ -x /usr/sbin/$$tool ] || missing="$$missing $$package"; done; \
	missing="$${missing# }"; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	echo "system-deps: installing the missing Debian packages: $$missing"; \
	if [ "$$(id -u)" = 0 ]; then sudo=""; \
	elif command -v sudo >/dev/null 2>&1; then sudo="sudo"; \
	else echo "error: this is not root and there is no sudo: as root run" \
	  "apt-get update && apt-get install -y --no-install-recommends $$missing" >&2; exit 1; fi; \
	guard=""; \
	if [ ! -e $(POLICY_RC) ]; then \
	  printf '#!/bin/sh\nexit 101\n' | $$sudo tee $(POLICY_RC) >/dev/null && $$sudo chmod 755 $(POLICY_RC) && guard=1; \
	fi; \
	$$sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq \
	  && $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	status=$$?; \
	if [ -n "$$guard" ]; then $$sudo rm -f $(POLICY_RC); fi; \
	exit $$status

demo: install system-deps
	$(BIN)/shepherd demo

test: install system-deps
	$(BIN)/ruff check .
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check . || true
	$(BIN)/mypy
	$(BIN)/hadolint --failure-threshold style docker/Dockerfile docker/Dockerfile.triton docker/Dockerfile.tensorrt

bench: install
	$(BIN)/python bench/run_all.py

# Issue 9: three local replicas behind HAProxy with Prometheus (about 20-35 minutes here); rewrites the
# Fleet section of docs/benchmarks.md, JSON in bench/tools/results/fleet.json.
bench-fleet: install system-deps
	$(BIN)/python bench/fleet.py --out bench/tools/results --write-docs

reliability: install
	$(BIN)/python bench/reliability.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
