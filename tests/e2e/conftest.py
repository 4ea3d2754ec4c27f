"""End-to-end fixtures: one real Airflow stack (api-server, dag-processor, scheduler + LocalExecutor) per backend,
shared by every test of a module. Runs in the tools venv (psutil, psycopg2); the stack runs from the venv under test.

Options (or environment variables):
  --e2e-venv PATH        venv whose `airflow` is tested (MEMSERIES_E2E_VENV; default .venv/airflow-3.3.2-patched)
  --e2e-backends LIST    comma-separated: sqlite,postgres (MEMSERIES_E2E_BACKENDS; default both)

`make prove` runs the memory test against the unpatched venv and expects it to fail:
  MEMSERIES_E2E_VENV=.venv/airflow-3.1.3 pytest tests/e2e -k uss_growth
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO / "scripts") not in sys.path:
    sys.path.insert(0, str(REPO / "scripts"))

DEFAULT_VENV = REPO / ".venv" / "airflow-3.3.2-patched"


def pytest_addoption(parser):
    group = parser.getgroup("memseries-e2e")
    group.addoption(
        "--e2e-venv",
        default=os.environ.get("MEMSERIES_E2E_VENV", str(DEFAULT_VENV)),
        help="Airflow venv to run the end-to-end stack from (default: $MEMSERIES_E2E_VENV or the patched 3.3.2)",
    )
    group.addoption(
        "--e2e-backends",
        default=os.environ.get("MEMSERIES_E2E_BACKENDS", "sqlite,postgres"),
        help="comma-separated metadata DBs to run the stack on (default: sqlite,postgres)",
    )


def pytest_generate_tests(metafunc):
    if "e2e_backend" in metafunc.fixturenames:
        backends = [b.strip() for b in metafunc.config.getoption("--e2e-backends").split(",") if b.strip()]
        for b in backends:
            if b not in ("sqlite", "postgres"):
                raise pytest.UsageError(f"--e2e-backends: unknown backend {b!r} (sqlite, postgres)")
        metafunc.parametrize("e2e_backend", backends, scope="module")


@pytest.fixture(scope="session")
def e2e_venv(pytestconfig) -> Path:
    venv = Path(pytestconfig.getoption("--e2e-venv"))
    if not venv.is_absolute():
        venv = (REPO / venv) if (REPO / venv).exists() else venv.resolve()
    if not (venv / "bin" / "airflow").exists():
        raise pytest.UsageError(
            f"e2e venv {venv} has no bin/airflow: build it (`memseries venv --base 3.3.2`) or point "
            "--e2e-venv / MEMSERIES_E2E_VENV at an Airflow venv"
        )
    return venv


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    # lets fixtures see whether the test failed (the e2e module dumps the stack's logs then)
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)


def pytest_report_header(config):
    return (
        f"memseries e2e: venv={config.getoption('--e2e-venv')} backends={config.getoption('--e2e-backends')}"
    )
