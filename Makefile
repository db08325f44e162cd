# Quick start: `make demo` then `make test`. Both create .venv on first use and reuse it while
# pyproject.toml and the lock are unchanged.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The versions the suite last passed with (scripts/lock.py): every install here goes through it.
LOCK := constraints.txt
PIP := $(BIN)/pip install --quiet --disable-pip-version-check -c $(LOCK)
DEMO_STAMP := $(VENV)/.demo-stamp
TEST_STAMP := $(VENV)/.test-stamp
# Everything the test suite exercises: runtimes, Crypto-fs, the demo model (dev has matplotlib for the bench report).
TEST_EXTRAS := dev,demo,onnxruntime,openvino,torch,safetensors,cfs,device,vault,edge

.PHONY: demo test test-latest lock test-slow faults soak lint typecheck system-deps bench vectors clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# The demo's edge part wants nginx (the gateway) and FUSE (Crypto-fs); as root they are installed
# when missing, otherwise the demo says so and goes direct to the vault / uses `cfs run`.
DEMO_SYSTEM_PACKAGES := libfuse3-dev fuse3 pkg-config gcc nginx
$(DEMO_STAMP): pyproject.toml $(LOCK) | $(VENV)/bin/python
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

$(TEST_STAMP): pyproject.toml $(LOCK) | $(VENV)/bin/python system-deps
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

# The suite on the newest releases (not in CI): a separate venv without the lock, then what differs
# from it. When it passes and the new versions are wanted, `make lock` pins them.
LATEST := .venv-latest
test-latest: system-deps
	rm -rf $(LATEST) && $(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/pip install --quiet --disable-pip-version-check --upgrade -e '.[$(TEST_EXTRAS)]'
	@echo "== versions that differ from $(LOCK):"
	@$(LATEST)/bin/python scripts/lock.py drift $(LOCK)
	$(LATEST)/bin/ruff check src tests bench scripts
	$(LATEST)/bin/mypy
	$(LATEST)/bin/pytest -q

# Pin what the current .venv holds (after a green `make test`, or in .venv-latest after test-latest).
lock:
	$(BIN)/python scripts/lock.py write $(LOCK)

# Long variants (multi-GiB models); CI runs them after `make test`.
test-slow: $(TEST_STAMP)
	$(BIN)/pytest -q -m slow

# The fault suite alone, with the figures its tests print (part of `make test` too).
faults: $(TEST_STAMP)
	$(BIN)/pytest -q -s -m faults

# The hour-long soak of the vault and the library (MODELSEAL_SOAK_SECONDS=N to change the hour).
soak: $(TEST_STAMP)
	$(BIN)/pytest -q -m soak

vectors: $(DEMO_STAMP)
	$(BIN)/python scripts/gen_vectors.py

# `make bench`: every script in bench/ writes its rows to $(BENCH_RESULTS)/<name>.json, then
# bench/report.py draws docs/img/bench-*.png and rewrites the generated block of docs/benchmarks.md.
# ~25 min on a 2-vCPU VM; QUICK=1 runs smaller models and fewer runs (~10 min); BENCHES="runtimes cfs"
# re-runs some and keeps the others' results. A bench whose component is missing (gocryptfs, age,
# FUSE, PostgreSQL, wrk) records why and the page says so; as root the missing tools are installed.
# Each timed run first waits (up to 20-120 s) for idle CPUs; BENCH_IDLE_WAIT=15 caps that wait on a
# machine that is never idle, and the page then says how many runs started on a busy machine.
BENCH_RESULTS ?= bench-results
BENCHES ?= open peers rewrap runtimes cfs release agent
BENCH_SYSTEM_PACKAGES := age gocryptfs openssl
ifeq ($(QUICK),1)
BENCH_ARGS_open := --size-mib 256 --reps 3 --seal-reps 2
BENCH_ARGS_peers := --size-mib 256 --reps 2
BENCH_ARGS_rewrap := --sizes-mb 10,100,500 --reps 5
BENCH_ARGS_runtimes := --sizes-mb 16,64,208 --reps 3
BENCH_ARGS_cfs := --size-mib 256 --reps 2
BENCH_ARGS_release := --levels 1,8,32 --duration 4
BENCH_ARGS_agent := --runs 50
endif
bench: $(TEST_STAMP)
	$(PIP) -e '.[bench]'
	@if [ "$$(id -u)" = 0 ] && ! { command -v age && command -v gocryptfs && command -v openssl; } >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(BENCH_SYSTEM_PACKAGES) >/dev/null \
	  || echo "modelseal: could not install $(BENCH_SYSTEM_PACKAGES); the benches that need them say so"; \
	fi
	@mkdir -p $(BENCH_RESULTS); date -u +"bench started %F %T UTC"
	@$(foreach b,$(BENCHES),rm -f $(BENCH_RESULTS)/$(b).json; \
	  echo "== bench/bench_$(b).py --results $(BENCH_RESULTS) $(BENCH_ARGS_$(b))"; \
	  $(BIN)/python bench/bench_$(b).py --results $(BENCH_RESULTS) $(BENCH_ARGS_$(b)) \
	  || echo "bench_$(b) FAILED (exit $$?): the page says it was not run";)
	@date -u +"bench finished %F %T UTC"
	$(BIN)/python bench/report.py --results $(BENCH_RESULTS)

clean:
	rm -rf $(VENV) $(LATEST) build dist src/*.egg-info .mypy_cache .ruff_cache .pytest_cache .hypothesis demo-output
