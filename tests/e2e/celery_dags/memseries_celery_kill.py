"""celery e2e: task instances that are running when the test SIGKILLs their celery worker.

Try 1 of every task waits (up to 150 s) for a release file the test creates after the kill, so the tasks on
the surviving worker finish normally; the tasks of the killed worker are failed by the scheduler's heartbeat
timeout and their try 2 finishes at once on the surviving worker.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG

TRY1 = (
    'if [ "{{ ti.try_number }}" = "1" ]; then '
    'for i in $(seq 300); do [ -e "$MEMSERIES_E2E_MARK_DIR/release-kill" ] && break; sleep 0.5; done; fi; '
    "echo try {{ ti.try_number }} ok"
)

with DAG(
    dag_id="memseries_celery_kill",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["memseries", "e2e", "celery"],
    default_args={"retries": 2, "retry_delay": timedelta(seconds=1)},
):
    for i in range(4):
        BashOperator(task_id=f"victim_{i}", bash_command=TRY1)
