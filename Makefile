# The two commands of the README: `make demo` (main job) and `make test` (everything CI runs).
SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTHON ?= python3
TOOLS := .venv/tools
MEMSERIES := $(TOOLS)/bin/memseries
# BASE: the base of demo/build/export/e2e; BASES: every base `make test` covers (unit tests and prove on each).
BASE ?= 3.3.2
BASES ?= 3.3.2 3.1.3
# Bases whose unpatched stack must FAIL the end-to-end worker-memory test (3.3.2 already freezes before forking).
E2E_PROVE_BASES ?= $(filter 3.1.3,$(BASES))
DURATION ?= 180

.PHONY: help tools venvs check build export test test-tools test-unit test-unit-sqlite test-unit-postgres test-unit-py313 prove prove-e2e-70117 test-e2e test-faults demo lock clean

help:
	@echo "make demo   - build patched + unpatched $(BASE), run the real stack on each, print the memory table (DURATION=$(DURATION)s each)"
	@echo "make test   - everything CI runs: check, tooling tests, unit tests (SQLite + PostgreSQL) and prove on $(BASES), end-to-end"
	@echo "make check | build | export | venvs | prove | prove-e2e-70117 | test-unit-py313 | lock | clean   (BASE=$(BASE), BASES=$(BASES))"

$(TOOLS)/.stamp: pyproject.toml
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install -q --disable-pip-version-check -e .
	touch $@

tools: $(TOOLS)/.stamp

venvs: tools
	@set -e; for b in $(sort $(BASES) $(BASE)); do $(MEMSERIES) venv --base $$b --both; done

check: tools
	$(MEMSERIES) check

build: tools
	$(MEMSERIES) build --base $(BASE)

export: tools
	$(MEMSERIES) export --base $(BASE)

test-tools: venvs
	$(TOOLS)/bin/python -m pytest tests --ignore=tests/e2e -q

# Each base runs only the test modules its series lists (`memseries unit --list --base B` prints them).
test-unit-sqlite: venvs
	@set -e; for b in $(BASES); do $(MEMSERIES) unit --base $$b --backend sqlite; done

test-unit-postgres: venvs
	@set -e; for b in $(BASES); do $(MEMSERIES) unit --base $$b --backend postgres; done

test-unit: test-unit-sqlite test-unit-postgres

# The patched 3.3.2 unit tests on Python 3.13 (not part of `make test`: one more venv and run, ~3 min).
test-unit-py313: tools
	$(MEMSERIES) venv --base 3.3.2 --python 3.13
	$(MEMSERIES) unit --base 3.3.2 --python-version 3.13 --backend sqlite

prove: venvs
	@set -e; for b in $(BASES); do $(MEMSERIES) prove --base $$b; done
	@set -e; for b in $(E2E_PROVE_BASES); do \
	  echo "end-to-end memory test on the UNPATCHED $$b stack (must fail there: workers copy the scheduler's heap)"; \
	  out=$$(MEMSERIES_E2E_VENV=.venv/airflow-$$b MEMSERIES_E2E_BACKENDS=sqlite \
	    $(TOOLS)/bin/python -m pytest tests/e2e/test_stack_e2e.py -q -p no:warnings -k uss_growth 2>&1) && rc=0 || rc=$$?; \
	  echo "$$out" | grep -E "^E  .*copied on write" | head -1 | sed "s/^E */  on the base: /"; \
	  if [ $$rc -eq 1 ] && echo "$$out" | grep -q "copied on write into the worker"; then \
	    echo "proven: the end-to-end memory test fails on the unpatched $$b"; \
	  else echo "NOT PROVEN: the end-to-end memory test did not fail for the memory reason on $$b (exit $$rc)"; exit 1; fi; \
	done

# apache/airflow#70117 end-to-end (task-sdk series): a real celery worker with SIGCHLD ignored, on the UNPATCHED
# 3.3.2 task SDK; must fail there (the task that dies stays `running`: its supervisor never finishes). PostgreSQL +
# Redis, ~5 min (it waits 240 s): heavy, not part of `make test`.
prove-e2e-70117: venvs
	@echo "#70117 end-to-end test on the UNPATCHED 3.3.2 task SDK (must fail there)"
	@out=$$(MEMSERIES_E2E_VENV=.venv/airflow-3.3.2 $(TOOLS)/bin/python -m pytest \
	    tests/e2e/test_celery_task_sdk_reaped_child.py -q -p no:warnings -p no:cacheprovider 2>&1) && rc=0 || rc=$$?; \
	  echo "$$out" | grep -E "^TI states:" | head -1 | sed "s/^/  on the base: /"; \
	  if [ $$rc -eq 1 ] && echo "$$out" | grep -q "'crash': 'running'" && echo "$$out" | grep -q "1 failed, 1 passed"; then \
	    echo "proven: the #70117 end-to-end test fails on the unpatched task SDK 1.3.2"; \
	  else echo "NOT PROVEN: it did not fail for the stuck-supervisor reason (exit $$rc)"; echo "$$out" | tail -5; exit 1; fi

# The end-to-end modules include the fault suite (issue 17, tests/e2e/test_faults.py: scenarios 1-5 on PostgreSQL,
# ~4 min on a 2-core machine; it stops PostgreSQL for 6 s, so it needs root or the postgres user, else it skips
# that scenario); `make test-faults` runs it alone.
test-e2e: venvs
	MEMSERIES_E2E_VENV=.venv/airflow-$(BASE)-patched $(TOOLS)/bin/python -m pytest tests/e2e -q

test-faults: venvs
	MEMSERIES_E2E_VENV=.venv/airflow-$(BASE)-patched $(TOOLS)/bin/python -m pytest tests/e2e/test_faults.py -q

test: check test-tools test-unit prove test-e2e

demo: tools
	$(MEMSERIES) demo --base $(BASE) --duration $(DURATION)

# Re-pin a base after editing its requirements.in (maintainers only; the result is committed).
# LOCK_PYTHON=3.13 writes constraints-py3.13.txt, used by `memseries venv --python 3.13` (only where pins differ).
LOCK_PYTHON ?= 3.11
lock: tools
	cd airflow-core/patches/$(BASE) && ../../../$(TOOLS)/bin/uv pip compile -q --generate-hashes \
	  --python-version $(LOCK_PYTHON) --python-platform x86_64-manylinux_2_28 requirements.in \
	  -o $(if $(filter 3.11,$(LOCK_PYTHON)),constraints.txt,constraints-py$(LOCK_PYTHON).txt)

clean:
	rm -rf dist build bench-results
