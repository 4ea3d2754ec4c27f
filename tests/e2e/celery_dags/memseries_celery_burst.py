"""celery e2e: a burst of short, independent BashOperator tasks (triggered by the test, no schedule)."""

from __future__ import annotations

from datetime import datetime

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG

with DAG(
    dag_id="memseries_celery_burst",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["memseries", "e2e", "celery"],
    default_args={"retries": 0},
):
    for i in range(16):
        BashOperator(task_id=f"echo_{i:02d}", bash_command="echo {{ ti.task_id }} on $(hostname)")
