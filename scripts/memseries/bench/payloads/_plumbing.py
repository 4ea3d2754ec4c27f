"""What every payload needs, in one place: a throw-away AIRFLOW_HOME with a migrated metadata DB, memory of a
process (tree), stopping a process group, and the one-JSON-object-last output.

Payloads run inside an Airflow venv as scripts (`python payloads/<name>.py`), so this module is imported as
`_plumbing` from their own directory; stdlib + psutil (+ psycopg2 for PostgreSQL) only, and never airflow at
import time (Airflow reads its configuration when first imported: the environment must be set before).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path


@contextlib.contextmanager
def airflow_home(prefix: str, backend: str = "sqlite", pg_url: str = "postgresql://postgres@127.0.0.1:5432",
                 env: dict | None = None, migrate: bool = True):
    """A fresh AIRFLOW_HOME (with dags/) and metadata DB, set in os.environ; `airflow db migrate` once; removed
    (PostgreSQL database dropped) at the end. Yields the home directory."""
    home = Path(tempfile.mkdtemp(prefix=prefix))
    (home / "dags").mkdir()
    pg_db = None
    if backend == "postgres":
        pg_db = f"memseries_bench_{uuid.uuid4().hex[:12]}"
        _pg_admin(pg_url, f'CREATE DATABASE "{pg_db}"')
        sql_conn = f"{pg_url.replace('postgresql://', 'postgresql+psycopg2://', 1)}/{pg_db}"
    else:
        sql_conn = f"sqlite:///{home / 'airflow.db'}"
    os.environ.update({
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": sql_conn,
        "AIRFLOW__DATABASE__LOAD_DEFAULT_CONNECTIONS": "False",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
        **(env or {}),
    })
    try:
        if migrate:
            proc = subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], capture_output=True, text=True,
                                  env=os.environ, check=False)
            if proc.returncode != 0:
                raise RuntimeError(f"airflow db migrate failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        yield home
    finally:
        with contextlib.suppress(Exception):
            settings = sys.modules.get("airflow.settings")
            if settings is not None and settings.engine is not None:
                settings.engine.dispose()
        if pg_db:
            _pg_admin(pg_url, f'DROP DATABASE IF EXISTS "{pg_db}" WITH (FORCE)')
        shutil.rmtree(home, ignore_errors=True)


def _pg_admin(pg_url: str, statement: str) -> None:
    import psycopg2

    conn = psycopg2.connect(f"{pg_url}/postgres")
    conn.autocommit = True
    try:
        conn.cursor().execute(statement)
    finally:
        conn.close()


def mem(proc) -> dict | None:
    """{"pss", "uss", "rss"} in bytes (psutil memory_full_info), or None for a process that is gone."""
    import psutil

    try:
        m = proc.memory_full_info()
    except psutil.Error:  # gone, or a zombie
        return None
    return {"pss": m.pss, "uss": m.uss, "rss": m.rss}


def tree_memory(proc) -> dict:
    """Sum of mem() over a process and all its descendants, plus how many were measured."""
    out = {"uss": 0, "pss": 0, "rss": 0, "procs": 0}
    for p in [proc, *proc.children(recursive=True)]:
        m = mem(p)
        if m is None:
            continue
        for k in ("uss", "pss", "rss"):
            out[k] += m[k]
        out["procs"] += 1
    return out


def stop_group(popen: subprocess.Popen, grace: float = 20.0) -> None:
    """SIGTERM the process group of `popen` (started with start_new_session=True), then SIGKILL what is left."""
    try:
        pgid = os.getpgid(popen.pid)
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and popen.poll() is None:
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)  # the leader and anything left in its group
    popen.wait(timeout=30)


def emit(result: dict) -> None:
    """The payload's result: one JSON object on the last stdout line (bench/common.run_payload reads it)."""
    print(json.dumps(result), flush=True)
