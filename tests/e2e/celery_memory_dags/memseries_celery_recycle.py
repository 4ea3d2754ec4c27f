"""celery e2e: short PythonOperator tasks, triggered by the test; each recycles a pool process (max tasks 1)."""

from __future__ import annotations

from datetime import datetime

from airflow.providers.standard.operators.python import PythonOperator
from airflow.sdk import DAG


def _work(n: int) -> None:
    data = {str(i): [i] * 8 for i in range(2000 + n)}
    assert len(data) == 2000 + n


with DAG(
    dag_id="memseries_celery_recycle",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["memseries", "e2e", "celery"],
    default_args={"retries": 0},
):
    for i in range(8):
        PythonOperator(task_id=f"work_{i:02d}", python_callable=_work, op_args=[i], do_xcom_push=False)
