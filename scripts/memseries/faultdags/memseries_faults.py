"""memseries fault suite: a DAG whose tasks record every try in files, so the harness can tell lost and doubled runs.

Triggered by the harness with conf {"n": mapped tasks, "seconds": how long each try runs}. Each try appends to
$MEMSERIES_FAULTS_TRACK_DIR/<run_id>.<task_id>.<map_index>.log the lines
  start <try_number> <pid> <unix time>
  hb <try_number> <pid> <unix time>      (every second while it runs)
  end <try_number> <pid> <unix time>
With no MEMSERIES_FAULTS_TRACK_DIR (outside the harness) the tasks only sleep.
"""

from __future__ import annotations

import os
import time
from datetime import datetime, timedelta

from airflow.sdk import DAG, task


def _record(run_id: str, task_id: str, map_index: int, what: str, try_number: int) -> None:
    track = os.environ.get("MEMSERIES_FAULTS_TRACK_DIR")
    if not track:
        return
    path = os.path.join(track, f"{run_id}.{task_id}.{map_index}.log")
    with open(path, "a") as f:  # one short line per write: appends of < PIPE_BUF bytes do not interleave
        f.write(f"{what} {try_number} {os.getpid()} {time.time():.3f}\n")


with DAG(
    dag_id="memseries_faults",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=16,
    tags=["memseries", "faults"],
    default_args={"retries": 3, "retry_delay": timedelta(seconds=2)},
):

    @task
    def plan(dag_run=None) -> list[int]:
        return list(range(int((dag_run.conf or {}).get("n", 4))))

    @task
    def work(i: int, dag_run=None, ti=None) -> int:
        seconds = float((dag_run.conf or {}).get("seconds", 5))
        _record(dag_run.run_id, ti.task_id, ti.map_index, "start", ti.try_number)
        deadline = time.time() + seconds
        while time.time() < deadline:
            time.sleep(min(1.0, max(0.0, deadline - time.time())))
            _record(dag_run.run_id, ti.task_id, ti.map_index, "hb", ti.try_number)
        _record(dag_run.run_id, ti.task_id, ti.map_index, "end", ti.try_number)
        return i

    work.expand(i=plan())
