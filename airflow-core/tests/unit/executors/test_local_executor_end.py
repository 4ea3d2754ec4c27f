"""LocalExecutor.end() waits for the tasks that run and starts no queued one (3.3.2 patch 0015).

Real LocalExecutor and worker processes; the workload runner (`BaseExecutor.run_workload`) is replaced before
`start()`, so the forked workers inherit the replacement: it notes each run in a file, and the task `running`
keeps its worker busy until the test releases it.

Unpatched 3.3.2 sends its workers one stop message per worker after everything already queued, so a stopping
scheduler (SIGTERM, or its loop died on a database error) still starts every queued task -- while another
scheduler, or this one restarted, resets those TIs as orphaned and runs them again: two tries at once (seen in
the fault suite's mixed run after a PostgreSQL restart).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
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
            dag_id="local_executor_end",
            run_id="manual__1",
            try_number=1,
            pool_slots=1,
            queue="default",
            priority_weight=1,
        ),
        dag_rel_path="local_executor_end.py",
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


def test_end_waits_for_the_running_task_and_starts_no_queued_one(monkeypatch, tmp_path, cleanup, session):
    runs = tmp_path / "runs"
    runs.mkdir()
    release = tmp_path / "release"

    def run(workload, **kwargs):
        (runs / workload.ti.task_id).write_text(str(os.getpid()))
        if workload.ti.task_id == "running":
            while not release.exists():
                time.sleep(0.05)
        return 0

    monkeypatch.setattr(BaseExecutor, "run_workload", staticmethod(run))
    ex = LocalExecutor(parallelism=1)
    ex.start()
    running, queued = make_workload("running"), make_workload("queued")
    ex.queue_workload(running, session=session)
    ex.queue_workload(queued, session=session)
    assert wait_for(lambda: (runs / "running").exists(), step=ex.heartbeat), "the first task never started"
    ex.heartbeat()  # `queued` is handed to the executor's workers now, behind `running`
    assert not ex.queued_tasks

    # The scheduler stops while `running` runs and `queued` waits. Let `running` finish once end() has had
    # the chance to decide about `queued` (the patched executor keeps it in `_pending` until then; unpatched
    # 3.3.2 has no such list: it is released at once, and its end() runs `queued` afterwards; an end() that
    # keeps it pending until it runs it gets it released after a while).
    def release_when_decided():
        wait_for(lambda: not getattr(ex, "_pending", ()), timeout=TIMEOUT / 2)  # else: released all the same
        release.touch()

    threading.Thread(target=release_when_decided, daemon=True).start()

    def expired(*_):
        raise TimeoutError(f"LocalExecutor.end() did not return within {TIMEOUT}s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(int(TIMEOUT))
    try:
        ex.end()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)

    events = ex.get_event_buffer()
    assert events[running.ti.key][0] == TaskInstanceState.SUCCESS
    assert not (runs / "queued").exists(), "end() started a task that was still queued"
    assert queued.ti.key not in events
