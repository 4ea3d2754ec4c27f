"""memseries fault suite: a DAG file whose parse takes a few seconds, so the harness can SIGKILL the process parsing
it. Each parse leaves $MEMSERIES_FAULTS_TRACK_DIR/slow_parse.<pid> (only inside the harness)."""

from __future__ import annotations

import os
import time
from datetime import datetime
from pathlib import Path

from airflow.sdk import DAG

_track = os.environ.get("MEMSERIES_FAULTS_TRACK_DIR")
if _track:
    Path(_track, f"slow_parse.{os.getpid()}").write_text(str(time.time()))
    time.sleep(float(os.environ.get("MEMSERIES_FAULTS_SLOW_PARSE_SECONDS", "4")))

with DAG(dag_id="memseries_faults_slow_parse", schedule=None, start_date=datetime(2026, 1, 1), catchup=False,
         tags=["memseries", "faults"]):
    pass
