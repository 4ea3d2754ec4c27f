"""celery e2e (task-sdk series): task processes whose exit status the supervisor cannot read."""

from __future__ import annotations

from datetime import datetime

from airflow.providers.standard.operators.python import PythonOperator
from airflow.sdk import DAG


def _ok() -> None:
    pass


def _crash() -> None:
    # the task process dies without reporting a terminal state (like an OOM kill or a segfault would)
    import os

    os._exit(1)


with DAG(
    dag_id="memseries_celery_reaped",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["memseries", "e2e", "celery"],
    default_args={"retries": 0},
):
    PythonOperator(task_id="ok", python_callable=_ok)
    PythonOperator(task_id="crash", python_callable=_crash)
