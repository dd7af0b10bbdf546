# EdgeFleet developer entry points. `make demo` and `make test` create everything they need.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TRITON := .venv-triton
PYTEST_ARGS ?=
# Test files run on this many workers (pytest-xdist); most tests wait on real processes.
PYTEST_WORKERS ?= 2

.PHONY: all venv demo test test-fast lint typecheck pytest bench bench-mlserver protos clean deb \
	soak soak-ci test-arm64 test-objstore

all: test

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/pip check
	touch $(STAMP)

# tritonclient pins protobuf<7, which clashes with our stubs: it gets its own environment, as an
# app on a device would have.
$(TRITON)/.installed: tests/tools/requirements-triton.txt
	$(PYTHON) -m venv $(TRITON)
	$(TRITON)/bin/pip install --quiet --upgrade pip
	$(TRITON)/bin/pip install --quiet -r tests/tools/requirements-triton.txt
	touch $@

venv: $(STAMP)

# .deb packages in dist/: the agent for bookworm and trixie, the server for bookworm, each for
# amd64 and arm64 (`make deb DIST=bookworm ARCH=arm64` for one). Needs dpkg-deb and a Python of
# each release's version for its bytecode (3.11, 3.13: Debian's or pyenv's); see docs/packaging.md.
DIST ?= all
ARCH ?= all
deb: $(STAMP)
	$(BIN)/python scripts/build_deb.py --out dist --dist $(DIST) --arch $(ARCH)

demo: $(STAMP)
	$(BIN)/python scripts/demo.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP) $(TRITON)/.installed
	EDGEFLEET_TRITON_PYTHON=$(abspath $(TRITON))/bin/python $(BIN)/pytest \
		-n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

test: lint typecheck pytest

# The arm64 agent package in an emulated Debian 12 arm64 root (qemu-user-static, mmdebstrap; as
# root): dpkg install, check-config, probe, predict, and the agent serving a model its server
# pushed. The root is cached in /var/cache/edgefleet (built first when missing, about 2 min).
test-arm64: $(STAMP)
	$(BIN)/python -m tests.emulation
	$(BIN)/pytest --arm64 -m arm64 -p no:cacheprovider $(PYTEST_ARGS) tests/test_arm64.py

# Artifacts in a real object store (Ceph's radosgw from Debian's packages, a single-node test
# cluster per module, tests/objstore.py) and the multi-host fleet in network namespaces (as root).
test-objstore: $(STAMP)
	$(BIN)/pytest --objstore -m objstore -p no:cacheprovider $(PYTEST_ARGS) tests/test_objstore*.py

# Quick feedback (under two minutes): lint, types, and the tests that start no process (the
# ones marked slow start servers, agents, brokers, compilers or scripts; see tests/conftest.py).
test-fast: lint typecheck
	$(BIN)/pytest -m "not slow" $(PYTEST_ARGS)

# Every benchmark in bench/ but MLServer's (below); bench_checkin needs PostgreSQL on
# 127.0.0.1:5432 as the tests do. `make test` runs each one's --quick mode
# (tests/test_bench_quick.py), which also checks that this list names them all.
bench: $(STAMP)
	$(BIN)/python -m bench.bench_inference
	$(BIN)/python -m bench.bench_routing
	$(BIN)/python -m bench.bench_optimize
	$(BIN)/python -m bench.bench_ingest
	$(BIN)/python -m bench.bench_delivery
	$(BIN)/python -m bench.bench_checkin
	$(BIN)/python -m bench.bench_dashboard
	$(BIN)/python -m bench.bench_spool
	$(BIN)/python -m bench.bench_shm
	$(BIN)/python -m bench.bench_spill
	$(BIN)/python -m bench.bench_start
	$(BIN)/python -m bench.bench_package
	$(BIN)/python -m bench.bench_objstore

.venv-mlserver/.installed: bench/mlserver/requirements.txt
	$(PYTHON) -m venv .venv-mlserver
	.venv-mlserver/bin/pip install --quiet -r bench/mlserver/requirements.txt
	touch $@

bench-mlserver: $(STAMP) .venv-mlserver/.installed
	$(BIN)/python -m bench.bench_mlserver

# Issue 19's proving ground (bench/soak): a real server, broker and agents plus simulated
# devices under a seeded fault schedule, then an invariant check (exit 1 on a violation).
# Runs as root (it mounts a small tmpfs); one soak at a time on a shared machine.
SOAK_MINUTES ?= 10
SOAK_SEED    ?= 19
SOAK_DB      ?= sqlite
SOAK_BROKER  ?= mosquitto
SOAK_AGENTS  ?= 5
SOAK_SIMS    ?= 300
SOAK_FAULTS  ?= all
SOAK_ARGS    ?=
soak: $(STAMP)
	$(BIN)/python -m bench.soak --minutes $(SOAK_MINUTES) --seed $(SOAK_SEED) --db $(SOAK_DB) \
		--broker $(SOAK_BROKER) --agents $(SOAK_AGENTS) --sims $(SOAK_SIMS) \
		--faults $(SOAK_FAULTS) $(SOAK_ARGS)

# The 2-minute variant for CI: SQLite, mosquitto, 3 agents; broker restart without persistence,
# server SIGKILL, agent SIGKILL mid-update, disk-full.
soak-ci: $(STAMP)
	$(BIN)/python -m bench.soak --minutes 2 --seed $(SOAK_SEED) --db sqlite --broker mosquitto \
		--agents 3 --sims 100 --faults ci --settle 60 $(SOAK_ARGS)

protos: $(STAMP)
	$(BIN)/python scripts/gen_protos.py

clean:
	rm -rf $(VENV) $(TRITON) .venv-mlserver .demo .mypy_cache .ruff_cache .pytest_cache
