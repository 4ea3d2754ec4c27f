"""memseries example: a DAG file that imports a heavy library at parse time.

Every parse of this file in a fresh dag-processor child imports numpy again, unless the dag-processor preloads it
before forking (the dag-processor patch: ``[dag_processor] preload_modules = numpy``).
"""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
from airflow.providers.standard.operators.python import PythonOperator
from airflow.sdk import DAG


def _matmul() -> None:
    a = np.arange(10_000, dtype=np.float64).reshape(100, 100)
    assert float((a @ a.T).trace()) > 0


with DAG(
    dag_id="memseries_heavy_numpy",
    schedule=timedelta(minutes=1),
    start_date=datetime(2026, 1, 1),
    catchup=True,
    max_active_runs=2,
    tags=["memseries"],
    default_args={"retries": 0},
):
    for i in range(5):
        PythonOperator(task_id=f"matmul_{i}", python_callable=_matmul, do_xcom_push=False)
