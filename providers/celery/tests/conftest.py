"""Test harness for the providers/celery series' unit tests, run inside an Airflow venv (patched or unpatched).

Each pytest session gets its own AIRFLOW_HOME in a temp dir before anything imports airflow (Airflow reads its
configuration at import time). These tests need no metadata database; the real-worker tests of the series are
end-to-end tests (tests/e2e/test_celery_provider_memory.py) because they need the whole stack.
"""

from __future__ import annotations

import os
import shutil
import tempfile


def pytest_configure(config):
    home = tempfile.mkdtemp(prefix="memseries-celery-home-")
    config._memseries_celery_home = home
    os.environ["AIRFLOW_HOME"] = home
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    os.environ.setdefault("AIRFLOW__CORE__UNIT_TEST_MODE", "True")
    os.environ.setdefault("AIRFLOW__CORE__EXECUTOR", "CeleryExecutor")


def pytest_unconfigure(config):
    home = getattr(config, "_memseries_celery_home", None)
    if home:
        shutil.rmtree(home, ignore_errors=True)
