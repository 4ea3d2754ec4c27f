"""celery e2e: a DAG the test changes while its runs are in flight.

The test sets the module constant VERSION to 2 in the copy in the stack's dags folder while ``hold`` is
running. Version 2 adds the task ``added_in_v2``. ``hold`` waits for a release file the test creates once it has
seen the scheduler move the unfinished task instances to the new DAG version (or gives up after 150 s).
"""

from __future__ import annotations

from datetime import datetime

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG

VERSION = 1

HOLD = (
    'for i in $(seq 300); do [ -e "$MEMSERIES_E2E_MARK_DIR/release-versioned" ] && exit 0; sleep 0.5; done; '
    "echo gave up waiting; exit 0"
)

with DAG(
    dag_id="memseries_celery_versioned",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=4,
    tags=["memseries", "e2e", "celery"],
    default_args={"retries": 0},
):
    first = BashOperator(task_id="first", bash_command="echo first")
    hold = BashOperator(task_id="hold", bash_command=HOLD)
    after = BashOperator(task_id="after", bash_command="echo after")
    last = BashOperator(task_id="last", bash_command=f"echo last of version {VERSION}")
    first >> hold >> after >> last
    if VERSION >= 2:
        last >> BashOperator(task_id="added_in_v2", bash_command="echo added in version 2")
