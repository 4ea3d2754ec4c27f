"""Test harness for the task-sdk series' unit tests, run inside an Airflow venv (patched or unpatched).

Each pytest session gets its own AIRFLOW_HOME in a temp dir before anything imports airflow (Airflow reads its
configuration at import time). These tests need no metadata database.
"""

from __future__ import annotations

import os
import shutil
import tempfile


def pytest_configure(config):
    home = tempfile.mkdtemp(prefix="memseries-task-sdk-home-")
    config._memseries_task_sdk_home = home
    os.environ["AIRFLOW_HOME"] = home
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    os.environ.setdefault("AIRFLOW__CORE__UNIT_TEST_MODE", "True")


def pytest_unconfigure(config):
    home = getattr(config, "_memseries_task_sdk_home", None)
    if home:
        shutil.rmtree(home, ignore_errors=True)
