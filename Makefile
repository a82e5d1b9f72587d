# make demo   install, then run the single-node PBX with a demo tenant
# make test   install with the test peers (SIPp, baresip, ...), then run the whole suite on
#             TEST_WORKERS pytest-xdist workers (most interop time is waiting, not CPU);
#             a test skipped for a missing tool fails it (only the Cassandra suite may skip)
# make bench  install with the test peers, then run the benchmarks (bench/run)
# make chaos  install with the test peers, then run the chaos drill (chaos/drill.py)
# make build  recompile the SIP hot path (mypyc, setup.py) in place, e.g. after editing one of
#             its modules (node/compiled.py HOT_PATH: until then they run as Python, with a
#             warning); HIVEPBX_PURE=1 make build removes the compiled extensions instead

SHELL := /bin/bash
VENV := .venv
PYTEST_ARGS ?=
# 4 workers on CI's 2 cores; TEST_WORKERS=0 runs in one process
TEST_WORKERS ?= 4

.PHONY: install install-test build demo test bench chaos

install:
	bash scripts/install-deps

install-test:
	bash scripts/install-deps --test

build:
	$(VENV)/bin/python -m pip install -q --disable-pip-version-check --no-deps -e .

demo: install
	$(VENV)/bin/hivepbx run --demo

# python -m pytest puts the repository root on sys.path, so tests import as tests.*
test: install-test
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider --strict-skips -n $(TEST_WORKERS) --dist worksteal \
		--durations=30 $(PYTEST_ARGS)

bench: install-test
	@if [ -x bench/run ]; then bench/run; else echo "make bench: no benchmarks yet (bench/run)"; fi

chaos: install-test
	$(VENV)/bin/python -m chaos.drill
