"""A dead LocalExecutor worker's task process group is killed before its task is reported failed.

Real LocalExecutor, real forked workers, and a real task process: the function a worker runs for a task
(``local_executor._execute_work``, which calls the task SDK's ``supervise()``) is replaced by one that does what
``supervise()`` does with processes: ``os.fork()`` the task process and wait for it. The task process forks a
helper of its own (as a task running a subprocess does), and both append a line to a heartbeat file every
20 ms until they are killed. No API server is needed, which is all the replacement is for.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest
from airflow.executors import local_executor, workloads
from airflow.executors.local_executor import LocalExecutor
from airflow.utils.state import TaskInstanceState

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="fork and process groups")


def make_workload(task_id: str) -> workloads.ExecuteTask:
    return workloads.ExecuteTask(
        token="",
        ti=workloads.TaskInstance(
            id=uuid.uuid4(),
            dag_version_id=uuid.uuid4(),
            task_id=task_id,
            dag_id="local_executor_dead_worker",
            run_id="manual__1",
            try_number=1,
            pool_slots=1,
            queue="default",
            priority_weight=1,
        ),
        dag_rel_path="local_executor_dead_worker.py",
        bundle_info=workloads.BundleInfo(name="dags-folder"),
        log_path=None,
    )


def wait_for(predicate, timeout: float, step=None, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if step:
            step()
        if predicate():
            return True
        time.sleep(interval)
    return False


def running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its reaper runs nothing)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _heartbeat_until_killed(beats: Path, pid_file: Path, seconds: float) -> None:
    pid_file.write_text(str(os.getpid()))
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        with beats.open("a") as f:
            f.write(f"{time.time()}\n")
        time.sleep(0.02)


@pytest.fixture
def task_dir(tmp_path, monkeypatch):
    """Workers run each task in a real forked task process (with a helper process of its own)."""

    def forking_work(log, workload):
        seconds = 120.0 if workload.ti.task_id.startswith("long") else 0.3
        pid = os.fork()  # as supervise() does: the task process is the worker's child
        if pid == 0:
            code = 0
            try:
                helper = os.fork()  # a process of the task's own: must stay in the task's process group
                role = "helper" if helper == 0 else "task"
                name = workload.ti.task_id
                (tmp_path / f"{name}.{role}.pgid").write_text(str(os.getpgid(0)))
                _heartbeat_until_killed(tmp_path / f"{name}.{role}.beats", tmp_path / f"{name}.{role}.pid", seconds)
                if helper:
                    os.waitpid(helper, 0)
            except BaseException:
                code = 1
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"task process exited with {status}")

    monkeypatch.setattr(local_executor, "_execute_work", forking_work)
    yield tmp_path
    # On a build without the fix the old try outlives the test: never leave it running.
    for pid_file in tmp_path.glob("*.pid"):
        pid = int(pid_file.read_text())
        if running(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture
def executor():
    ex = LocalExecutor(parallelism=2)
    ex.start()
    yield ex
    for proc in list(ex.workers.values()):
        try:
            if proc.is_alive():
                proc.kill()
                proc.join(5)
        except ValueError:  # already closed
            pass


def _pid(task_dir: Path, name: str, role: str) -> int:
    return int((task_dir / f"{name}.{role}.pid").read_text())


def test_busy_worker_killed_task_group_gone_before_failure_reported(task_dir, executor, session):
    work = make_workload("long_task")
    executor.queue_workload(work, session=session)
    executor.heartbeat()
    assert wait_for(
        lambda: all((task_dir / f"long_task.{r}.beats").exists() for r in ("task", "helper")), timeout=30
    ), "the task and its helper never started"
    task, helper = _pid(task_dir, "long_task", "task"), _pid(task_dir, "long_task", "helper")
    worker = psutil.Process(task).ppid()
    assert worker in executor.workers, "the task process is not the child of a worker"
    # The task process leads its own process group; the helper it forked stays in that group.
    assert int((task_dir / "long_task.task.pgid").read_text()) == task
    assert int((task_dir / "long_task.helper.pgid").read_text()) == task
    assert os.getpgid(task) != os.getpgrp()

    os.kill(worker, signal.SIGKILL)

    events: dict = {}
    at_report: dict = {}

    def step():
        executor.sync()
        events.update(executor.get_event_buffer())
        if work.ti.key in events and not at_report:
            # the moment the failure is reported: what runs and what was written by then
            at_report["running"] = [pid for pid in (task, helper) if running(pid)]
            at_report["beats"] = {
                r: (task_dir / f"long_task.{r}.beats").read_text().count("\n") for r in ("task", "helper")
            }

    assert wait_for(lambda: work.ti.key in events, timeout=30, step=step), (
        "the dead worker's task was never reported (3.1.3 leaves it to the task heartbeat timeout)"
    )
    assert events[work.ti.key][0] == TaskInstanceState.FAILED
    assert at_report["running"] == [], "the old try still ran when its failure was reported"
    # Nothing of the old try ever writes again: 25 heartbeat intervals later, still no new line.
    time.sleep(0.5)
    after = {r: (task_dir / f"long_task.{r}.beats").read_text().count("\n") for r in ("task", "helper")}
    assert after == at_report["beats"]
    assert worker not in executor.workers
    assert executor._worker_tasks == {} and executor._task_groups == {} and executor._dying_tasks == {}


def test_tasks_that_finish_report_success_and_leave_nothing_tracked(task_dir, executor, session):
    batch = [make_workload(f"short_{i}") for i in range(3)]
    for work in batch:
        executor.queue_workload(work, session=session)
    events: dict = {}

    def step():
        executor.heartbeat()
        events.update(executor.get_event_buffer())

    assert wait_for(lambda: {w.ti.key for w in batch} <= set(events), timeout=60, step=step, interval=0.05)
    assert {events[w.ti.key][0] for w in batch} == {TaskInstanceState.SUCCESS}
    for work in batch:
        name = work.ti.task_id
        assert int((task_dir / f"{name}.task.pgid").read_text()) == _pid(task_dir, name, "task")
    assert executor._worker_tasks == {} and executor._task_groups == {}
    assert len(executor.workers) == 2
