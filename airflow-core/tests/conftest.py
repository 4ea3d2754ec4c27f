"""Test harness for the series' own tests, run inside an Airflow venv (patched or unpatched).

Each pytest session gets its own AIRFLOW_HOME in a temp dir and its own metadata database, migrated once with
the real `airflow db migrate`. SQLite by default; `--backend postgres` (or MEMSERIES_BACKEND=postgres) creates a
fresh database on the local PostgreSQL server (MEMSERIES_PG_URL, default postgresql://postgres@127.0.0.1:5432)
and drops it at the end.

Nothing here imports airflow at module level: Airflow reads its configuration at import time, so the environment
must be in place first (pytest_configure runs before any test module is imported).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

PG_URL = os.environ.get("MEMSERIES_PG_URL", "postgresql://postgres@127.0.0.1:5432")
# the migration head, the default pool and the log filename templates that `airflow db migrate` wrote
KEEP_TABLES = {"alembic_version", "slot_pool", "log_template"}


def pytest_addoption(parser):
    parser.addoption(
        "--backend",
        choices=("sqlite", "postgres"),
        default=os.environ.get("MEMSERIES_BACKEND", "sqlite"),
        help="metadata database for this test session (default: sqlite, or $MEMSERIES_BACKEND)",
    )


def _pg_admin(statement: str) -> None:
    """Run one statement outside a transaction on the server's maintenance database (CREATE/DROP DATABASE)."""
    import psycopg2

    conn = psycopg2.connect(f"{PG_URL}/postgres")
    conn.autocommit = True
    try:
        conn.cursor().execute(statement)
    finally:
        conn.close()


def pytest_configure(config):
    if hasattr(config, "workerinput"):  # pragma: no cover - no xdist here, but never set up twice
        return
    try:
        # setproctitle finds the process's argv area through the environment on its first call; after the
        # environment is rewritten below it cannot, and every title set in this process and its children
        # (LocalExecutor workers, zygotes) would silently stay unchanged. Let it look first.
        import setproctitle

        setproctitle.getproctitle()
    except ImportError:  # pragma: no cover - Airflow depends on it
        pass
    backend = config.getoption("--backend")
    home = Path(tempfile.mkdtemp(prefix="memseries-airflow-home-"))
    (home / "dags").mkdir()
    config._memseries_home = home
    config._memseries_backend = backend
    config._memseries_pg_db = None
    if backend == "postgres":
        db = f"memseries_test_{uuid.uuid4().hex[:12]}"
        _pg_admin(f'CREATE DATABASE "{db}"')
        config._memseries_pg_db = db
        conn = f"{PG_URL.replace('postgresql://', 'postgresql+psycopg2://', 1)}/{db}"
    else:
        conn = f"sqlite:///{home / 'airflow.db'}"
    os.environ.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__UNIT_TEST_MODE": "True",
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": conn,
            "AIRFLOW__DATABASE__LOAD_DEFAULT_CONNECTIONS": "False",
            "MEMSERIES_BACKEND": backend,
        }
    )
    proc = subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"], capture_output=True, text=True, env=os.environ
    )
    if proc.returncode != 0:
        raise pytest.UsageError(
            f"`airflow db migrate` failed on {backend} (exit {proc.returncode}):\n{proc.stderr[-4000:]}"
        )


def pytest_unconfigure(config):
    home = getattr(config, "_memseries_home", None)
    if getattr(config, "_memseries_pg_db", None):
        try:
            from airflow import settings

            if settings.engine is not None:
                settings.engine.dispose()
        except Exception:
            pass
        _pg_admin(f'DROP DATABASE IF EXISTS "{config._memseries_pg_db}" WITH (FORCE)')
    if home is not None:
        shutil.rmtree(home, ignore_errors=True)


def pytest_report_header(config):
    return f"memseries: backend={config._memseries_backend} AIRFLOW_HOME={config._memseries_home}"


@pytest.fixture(scope="session")
def backend(pytestconfig) -> str:
    """'sqlite' or 'postgres': the metadata database this session runs against."""
    return pytestconfig._memseries_backend


@pytest.fixture(scope="session")
def airflow_home(pytestconfig) -> Path:
    return pytestconfig._memseries_home


@pytest.fixture
def session():
    """A real metadata-DB session; rolled back and closed after the test."""
    from airflow import settings

    sess = settings.Session()
    try:
        yield sess
    finally:
        sess.rollback()
        sess.close()


def _clear_all_tables() -> None:
    from airflow import settings
    from airflow.models import import_all_models
    from airflow.models.base import Base

    import_all_models()
    with settings.engine.begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            if table.name not in KEEP_TABLES:
                conn.execute(table.delete())


@pytest.fixture
def clear_db():
    """Empty every metadata table but KEEP_TABLES before and after the test."""
    _clear_all_tables()
    yield
    _clear_all_tables()
