"""e2e fault injection: the first try sleeps long enough to have its LocalExecutor worker SIGKILLed; the retry
finishes at once. Triggered by the test (no schedule)."""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG

with DAG(
    dag_id="memseries_e2e_fault",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["memseries", "e2e"],
):
    BashOperator(
        task_id="victim",
        bash_command='if [ "{{ ti.try_number }}" = "1" ]; then sleep 45; fi; echo try {{ ti.try_number }} ok',
        retries=2,
        retry_delay=timedelta(seconds=1),
        priority_weight=1000,
    )
