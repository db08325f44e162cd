# Quick start: `make demo` then `make test`. Both create .venv on first use and reuse it while
# pyproject.toml is unchanged.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install --quiet --disable-pip-version-check
DEMO_STAMP := $(VENV)/.demo-stamp
TEST_STAMP := $(VENV)/.test-stamp
# Everything the test suite exercises: runtimes, Crypto-fs, the demo model.
TEST_EXTRAS := dev,demo,onnxruntime,openvino,torch,safetensors,cfs,device,vault

.PHONY: demo test test-slow lint typecheck system-deps bench vectors clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# The demo's edge part wants nginx (the gateway) and FUSE (Crypto-fs); as root they are installed
# when missing, otherwise the demo says so and goes direct to the vault / uses `cfs run`.
DEMO_SYSTEM_PACKAGES := libfuse3-dev fuse3 pkg-config gcc nginx
$(DEMO_STAMP): pyproject.toml | $(VENV)/bin/python
	@if [ "$$(id -u)" = 0 ] && { ! pkg-config --exists fuse3 2>/dev/null || [ ! -x /usr/sbin/nginx ]; }; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(DEMO_SYSTEM_PACKAGES) >/dev/null \
	  || echo "modelseal: could not install $(DEMO_SYSTEM_PACKAGES); the demo falls back"; \
	fi
	$(PIP) -e '.[dev,demo,vault]'
	$(PIP) -e '.[cfs]' || echo "modelseal: the FUSE extra did not install (needs libfuse3-dev): the demo uses cfs run"
	touch $@

# Debian packages that Python packages build against (pyfuse3 needs libfuse3) or tests run
# (fusermount3, nginx as the vault gateway, PostgreSQL for the vault's storage tests, SoftHSM2 as
# its PKCS#11 token; strace for the no-plaintext-written test of tests/adversarial; wrk drives
# bench/bench_release.py). Installed when missing and we are root; otherwise say what to install.
SYSTEM_PACKAGES := libfuse3-dev fuse3 pkg-config gcc nginx postgresql softhsm2 strace wrk
system-deps:
	@if ! pkg-config --exists fuse3 2>/dev/null || ! command -v fusermount3 >/dev/null || [ ! -x /usr/sbin/nginx ] \
	  || ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || ! command -v softhsm2-util >/dev/null \
	  || ! command -v strace >/dev/null || ! command -v wrk >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SYSTEM_PACKAGES) >/dev/null; \
	  else \
	    echo "missing system packages: sudo apt-get install $(SYSTEM_PACKAGES)"; exit 1; \
	  fi; \
	fi

$(TEST_STAMP): pyproject.toml | $(VENV)/bin/python system-deps
	$(PIP) -e '.[$(TEST_EXTRAS)]'
	touch $@

demo: $(DEMO_STAMP)
	$(BIN)/python scripts/demo.py
	$(BIN)/python scripts/demo_edge.py

lint: $(TEST_STAMP)
	$(BIN)/ruff check src tests bench scripts

typecheck: $(TEST_STAMP)
	$(BIN)/mypy

test: lint typecheck
	$(BIN)/pytest -q

# Long variants (multi-GiB models); CI runs them after `make test`.
test-slow: $(TEST_STAMP)
	$(BIN)/pytest -q -m slow

vectors: $(DEMO_STAMP)
	$(BIN)/python scripts/gen_vectors.py

bench: $(TEST_STAMP)
	$(PIP) -e '.[bench]'
	$(BIN)/python bench/bench_open.py
	$(BIN)/python bench/bench_peers.py
	$(BIN)/python bench/bench_rewrap.py
	$(BIN)/python bench/bench_runtimes.py
	$(BIN)/python bench/bench_release.py
	@if [ "$$(id -u)" = 0 ] && command -v gocryptfs >/dev/null; then $(BIN)/python bench/bench_cfs.py; \
	  else echo "bench_cfs skipped: needs root and gocryptfs (apt-get install gocryptfs)"; fi

clean:
	rm -rf $(VENV) build dist src/*.egg-info .mypy_cache .ruff_cache .pytest_cache .hypothesis demo-output
