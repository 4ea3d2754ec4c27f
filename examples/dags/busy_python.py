"""memseries example: many short PythonOperator tasks that keep the executor busy (see busy_bash.py)."""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.providers.standard.operators.python import PythonOperator
from airflow.sdk import DAG


def _work(n: int) -> None:
    # a little real work: build and drop some objects, like a typical small task
    data = {str(i): [i] * 8 for i in range(2000 + n)}
    assert len(data) == 2000 + n


with DAG(
    dag_id="memseries_busy_python",
    schedule=timedelta(minutes=1),
    start_date=datetime(2026, 1, 1),
    catchup=True,
    max_active_runs=4,
    tags=["memseries"],
    default_args={"retries": 0},
):
    for i in range(20):
        PythonOperator(task_id=f"work_{i:02d}", python_callable=_work, op_args=[i], do_xcom_push=False)
