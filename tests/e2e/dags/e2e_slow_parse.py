"""e2e fault injection: a DAG file whose parse takes a few seconds, so the test can SIGKILL the dag-processor
child parsing it. Each parse leaves a marker file named after the parsing pid (only when the test asks for it)."""

from __future__ import annotations

import os
import time
from datetime import datetime
from pathlib import Path

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import DAG

_marks = os.environ.get("MEMSERIES_E2E_MARK_DIR")
if _marks:
    Path(_marks, f"slow_parse.{os.getpid()}").write_text(str(time.time()))
    time.sleep(float(os.environ.get("MEMSERIES_E2E_SLOW_PARSE_SECONDS", "5")))

with DAG(
    dag_id="memseries_e2e_slow_parse",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["memseries", "e2e"],
):
    EmptyOperator(task_id="nothing")
