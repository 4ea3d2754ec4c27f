"""memseries example: one task mapped over 500 items, in a run triggered with a large conf (~1 MB).

Not scheduled: the demo (and `memseries bench conf-spike`) triggers it with a ~1 MB ``conf``, e.g.
``{"pick": "needle", "records": [...]}``. Each mapped task instance reads only ``conf["pick"]``. On Airflow
3.3.2 the scheduler loads the run's whole ``conf`` once per TaskInstance row (the run is eagerly joined to every
TaskInstance query), so this one run makes the scheduler's heap jump by hundreds of MB while it expands,
schedules, queues and finishes the 500 task instances (apache/airflow#71267; 3.3.2 patch 0002).
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG, task

MAPPED = 500

with DAG(
    dag_id="memseries_mapped_conf",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_tasks=64,
    tags=["memseries"],
    default_args={"retries": 0},
) as dag:

    @task
    def pick(item: int, dag_run=None) -> str:
        # read a small part of the big conf only
        return f"{item}:{(dag_run.conf or {}).get('pick', '')}"

    pick.expand(item=list(range(MAPPED)))
