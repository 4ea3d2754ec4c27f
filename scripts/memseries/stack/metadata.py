"""The stack's metadata database, seen from the orchestrator: create/drop it, read counts, write a few rows.

sqlite3 / psycopg2 from the tools venv; Airflow is never imported here.
"""

from __future__ import annotations

import uuid
from pathlib import Path

from memseries.stack.config import PG_URL, StackError


def postgres_unreachable(pg_url: str = PG_URL) -> str | None:
    """None if PostgreSQL answers at pg_url, else why not (for skips and clear errors)."""
    try:
        import psycopg2

        psycopg2.connect(f"{pg_url}/postgres", connect_timeout=5).close()
    except Exception as e:  # noqa: BLE001 - any failure means: not usable
        return f"PostgreSQL at {pg_url} not reachable: {e}"
    return None


def _pg_admin(pg_url: str, statement: str) -> None:
    import psycopg2

    conn = psycopg2.connect(f"{pg_url}/postgres", connect_timeout=10)
    conn.autocommit = True
    try:
        conn.cursor().execute(statement)
    finally:
        conn.close()


class MetadataDB:
    def __init__(self, backend: str, home: Path, pg_url: str = PG_URL):
        self.backend = backend
        self.home = home
        self.pg_url = pg_url
        self.pg_db: str | None = None
        if backend == "sqlite":
            self.uri = f"sqlite:///{home / 'airflow.db'}"
        elif backend == "postgres":
            self.pg_db = f"memseries_stack_{uuid.uuid4().hex[:12]}"
            _pg_admin(pg_url, f'CREATE DATABASE "{self.pg_db}"')
            self.uri = f"{pg_url.replace('postgresql://', 'postgresql+psycopg2://', 1)}/{self.pg_db}"
        else:
            raise StackError(f"unknown backend {backend!r} (sqlite or postgres)")

    def drop(self) -> None:
        if self.pg_db:
            _pg_admin(self.pg_url, f'DROP DATABASE IF EXISTS "{self.pg_db}" WITH (FORCE)')

    def _connect(self, readonly: bool):
        if self.backend == "sqlite":
            import sqlite3

            path = self.home / "airflow.db"
            if readonly:
                return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
            return sqlite3.connect(str(path), timeout=60)
        import psycopg2

        return psycopg2.connect(f"{self.pg_url}/{self.pg_db}", connect_timeout=10)

    def _sql(self, sql: str) -> str:
        return sql.replace("%s", "?") if self.backend == "sqlite" else sql

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        """One read-only query."""
        conn = self._connect(readonly=True)
        try:
            cur = conn.cursor()
            cur.execute(self._sql(sql), params)
            return cur.fetchall()
        finally:
            conn.close()

    def execute(self, sql: str, params: tuple = ()) -> int:
        """One write statement, committed; returns the row count."""
        conn = self._connect(readonly=False)
        try:
            with conn:
                cur = conn.cursor()
                cur.execute(self._sql(sql), params)
                return cur.rowcount
        finally:
            conn.close()

    def set_paused(self, dag_id: str, paused: bool = True) -> None:
        """Pause/unpause a DAG directly (what `airflow dags pause` does, without its start-up)."""
        if self.execute("UPDATE dag SET is_paused = %s WHERE dag_id = %s", (paused, dag_id)) != 1:
            raise StackError(f"no DAG {dag_id!r} to (un)pause")

    def task_counts(self, dag_prefix: str | None = None) -> dict[str, int]:
        """Task instances by state (current try), plus 'retried' = earlier tries kept in task_instance_history."""
        where, params = "", ()
        if dag_prefix:
            where, params = " WHERE dag_id LIKE %s", (dag_prefix + "%",)
        rows = self.query(f"SELECT state, count(*) FROM task_instance{where} GROUP BY state", params)
        out = {str(state): n for state, n in rows}
        try:
            out["retried"] = self.query(f"SELECT count(*) FROM task_instance_history{where}", params)[0][0]
        except Exception:  # noqa: BLE001 - a base without task_instance_history: no retries to count
            out["retried"] = 0
        return out

    def failed_tasks(self) -> list[tuple]:
        return [tuple(r) for r in self.query(
            "SELECT dag_id, task_id, count(*) FROM task_instance WHERE state IN ('failed', 'upstream_failed') "
            "GROUP BY dag_id, task_id")]
