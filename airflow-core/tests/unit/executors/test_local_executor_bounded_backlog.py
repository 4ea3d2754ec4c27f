"""LocalExecutor counts started tasks as running and keeps at most `parallelism` workloads waiting (3.3.2 0018).

Real LocalExecutor and worker processes; the workload runner (`BaseExecutor.run_workload`) is replaced before
`start()`, so the forked workers inherit the replacement: it notes each run in a file and holds its worker until
the test releases that task.

Unpatched 3.3.2 never puts a handed-over task in `running`, so it reports `parallelism` open slots whatever its
workers do and takes up to `parallelism` more workloads on every scheduler loop: its backlog grows with how fast
the scheduler loops, and each task waits QUEUED behind it (past `task_queued_timeout` on a long backlog).
"""

from __future__ import annotations

import os
import sys
import time
import uuid

import psutil
import pytest
from airflow.executors import workloads
from airflow.executors.base_executor import BaseExecutor
from airflow.executors.local_executor import LocalExecutor
from airflow.utils.state import TaskInstanceState

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="fork")

# Generous: what the waits cover is a fork, a pickle over a pipe and a few syncs, on a loaded 2-core machine.
TIMEOUT = 60.0


def make_workload(task_id: str) -> workloads.ExecuteTask:
    return workloads.ExecuteTask(
        token="",
        ti=workloads.TaskInstance(
            id=uuid.uuid4(),
            dag_version_id=uuid.uuid4(),
            task_id=task_id,
            dag_id="local_executor_bounded_backlog",
            run_id="manual__1",
            try_number=1,
            pool_slots=1,
            queue="default",
            priority_weight=1,
        ),
        dag_rel_path="local_executor_bounded_backlog.py",
        bundle_info=workloads.BundleInfo(name="dags-folder"),
        log_path=None,
    )


def wait_for(predicate, timeout: float = TIMEOUT, step=None, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if step:
            step()
        if predicate():
            return True
        time.sleep(interval)
    return False


@pytest.fixture
def cleanup():
    yield
    for proc in psutil.Process().children(recursive=True):
        try:
            proc.kill()
        except psutil.Error:
            pass


def test_started_tasks_are_running_and_the_backlog_stops_at_parallelism(monkeypatch, tmp_path, cleanup, session):
    runs, release = tmp_path / "runs", tmp_path / "release"
    runs.mkdir()
    release.mkdir()

    def run(workload, **kwargs):
        (runs / workload.ti.task_id).write_text(str(os.getpid()))
        deadline = time.monotonic() + 2 * TIMEOUT
        while not (release / workload.ti.task_id).exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        return 0

    monkeypatch.setattr(BaseExecutor, "run_workload", staticmethod(run))
    ex = LocalExecutor(parallelism=2)
    ex.start()
    events: dict = {}

    def step():
        ex.heartbeat()
        events.update(ex.get_event_buffer())

    batch = [make_workload(f"task_{i}") for i in range(5)]
    try:
        for w in batch:
            ex.queue_workload(w, session=session)
        assert wait_for(lambda: len(list(runs.iterdir())) == 2, step=step), "two tasks never started"
        started = {w.ti.key for w in batch if (runs / w.ti.task_id).exists()}
        assert wait_for(lambda: set(ex.running) == started, step=step), (
            f"running is {set(ex.running)}, not the two tasks the workers started"
        )
        for _ in range(5):  # more scheduler loops while both workers are busy
            step()
        assert len(ex.queued_tasks) == 1, (
            f"with both workers busy the executor took {5 - len(ex.queued_tasks)} of 5 workloads; "
            "it keeps 2 running and at most parallelism (2) waiting"
        )
        assert ex.slots_available <= 0
        # The scheduler queues up to [core] parallelism - slots_occupied more TIs per loop: none now.
        assert ex.parallelism - ex.slots_occupied <= 0

        for w in batch:
            (release / w.ti.task_id).touch()
        keys = {w.ti.key for w in batch}
        assert wait_for(lambda: keys <= set(events), step=step), f"only {sorted(events)} finished"
        assert {events[k][0] for k in keys} == {TaskInstanceState.SUCCESS}
        assert not ex.running
    finally:
        for w in batch:
            (release / w.ti.task_id).touch()
        ex.end()
