"""memseries example: many short BashOperator tasks that keep the executor busy.

Catch-up from a fixed date with a 1-minute schedule gives an endless backlog, so the scheduler always has
several running DAG runs of 20 tasks each to examine, and LocalExecutor always has work queued.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG

with DAG(
    dag_id="memseries_busy_bash",
    schedule=timedelta(minutes=1),
    start_date=datetime(2026, 1, 1),
    catchup=True,
    max_active_runs=4,
    tags=["memseries"],
    default_args={"retries": 0},
):
    for i in range(20):
        BashOperator(task_id=f"echo_{i:02d}", bash_command="echo {{ ti.task_id }} {{ ds }}")
