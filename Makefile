# The two commands of the README: `make demo` (main job) and `make test` (everything CI runs).
SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTHON ?= python3
TOOLS := .venv/tools
MEMSERIES := $(TOOLS)/bin/memseries
BASE ?= 3.1.3
PATCHED := .venv/airflow-$(BASE)-patched/bin/python
DURATION ?= 180

.PHONY: help tools venvs check build export test test-tools test-unit test-unit-sqlite test-unit-postgres prove test-e2e demo lock clean

help:
	@echo "make demo   - build patched + unpatched $(BASE), run the real stack on each, print the memory table (DURATION=$(DURATION)s each)"
	@echo "make test   - everything CI runs: check, tooling tests, unit tests (SQLite + PostgreSQL), prove, end-to-end"
	@echo "make check | build | export | venvs | prove | lock | clean"

$(TOOLS)/.stamp: pyproject.toml
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install -q --disable-pip-version-check -e .
	touch $@

tools: $(TOOLS)/.stamp

venvs: tools
	$(MEMSERIES) venv --base $(BASE)
	$(MEMSERIES) venv --base $(BASE) --unpatched
	$(MEMSERIES) venv --base 3.3.2 --unpatched

check: tools
	$(MEMSERIES) check

build: tools
	$(MEMSERIES) build --base $(BASE)

export: tools
	$(MEMSERIES) export --base $(BASE)

test-tools: venvs
	$(TOOLS)/bin/python -m pytest tests --ignore=tests/e2e -q

test-unit-sqlite: venvs
	$(PATCHED) -m pytest airflow-core/tests -q --backend sqlite

test-unit-postgres: venvs
	$(PATCHED) -m pytest airflow-core/tests -q --backend postgres

test-unit: test-unit-sqlite test-unit-postgres

prove: venvs
	$(MEMSERIES) prove --base $(BASE)
	@echo "end-to-end memory test on the UNPATCHED $(BASE) stack (must fail there: workers copy the scheduler's heap)"
	@out=$$(MEMSERIES_E2E_VENV=.venv/airflow-$(BASE) MEMSERIES_E2E_BACKENDS=sqlite \
	  $(TOOLS)/bin/python -m pytest tests/e2e/test_stack_e2e.py -q -p no:warnings -k uss_growth 2>&1); rc=$$?; \
	  echo "$$out" | grep -E "^E  .*copied on write" | head -1 | sed "s/^E */  on the base: /"; \
	  if [ $$rc -eq 1 ] && echo "$$out" | grep -q "copied on write into the worker"; then \
	    echo "proven: the end-to-end memory test fails on the unpatched base"; \
	  else echo "NOT PROVEN: the end-to-end memory test did not fail for the memory reason (exit $$rc)"; exit 1; fi

test-e2e: venvs
	@if [ -d tests/e2e ]; then $(TOOLS)/bin/python -m pytest tests/e2e -q; else echo "no end-to-end tests yet"; fi

test: check test-tools test-unit prove test-e2e

demo: tools
	$(MEMSERIES) demo --duration $(DURATION)

# Re-pin a base after editing its requirements.in (maintainers only; the result is committed).
lock: tools
	cd airflow-core/patches/$(BASE) && ../../../$(TOOLS)/bin/uv pip compile -q --generate-hashes \
	  --python-version 3.11 --python-platform x86_64-manylinux_2_28 requirements.in -o constraints.txt

clean:
	rm -rf dist build bench-results
