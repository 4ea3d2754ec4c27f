"""A LocalExecutor pool survives workers that die (3.3.2 patch 0007).

Real LocalExecutor, real worker processes, real signals. The workload runner (`BaseExecutor.run_workload`) is
replaced before `start()` so that forked workers inherit the replacement; the busy-worker test's replacement
forks a real task process into its own process group exactly like the task SDK's supervisor does.

On unpatched 3.3.2 all workers share one queue: an idle worker killed while blocked in its `get()` keeps the
queue's read lock forever and the pool never runs another task; a busy worker killed mid-task is never noticed
(its task process runs on, orphaned, until the scheduler's heartbeat timeout minutes later).
"""

from __future__ import annotations

import os
import re
import signal
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest
from airflow.executors import workloads
from airflow.executors.base_executor import BaseExecutor
from airflow.executors.local_executor import LocalExecutor
from airflow.utils.state import TaskInstanceState

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="fork, process groups and /proc")

# Generous: what these waits cover is a fork, a pickle over a pipe and a few syncs, on a loaded 2-core machine.
TIMEOUT = 60.0


def make_workload(task_id: str) -> workloads.ExecuteTask:
    return workloads.ExecuteTask(
        token="",
        ti=workloads.TaskInstance(
            id=uuid.uuid4(),
            dag_version_id=uuid.uuid4(),
            task_id=task_id,
            dag_id="local_executor_dead_workers",
            run_id="manual__1",
            try_number=1,
            pool_slots=1,
            queue="default",
            priority_weight=1,
        ),
        dag_rel_path="local_executor_dead_workers.py",
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


class Driver:
    """Drives an executor like the scheduler loop does and collects every event it reports, in order."""

    def __init__(self, executor: LocalExecutor):
        self.ex = executor
        self.events: list[tuple] = []

    def step(self):
        self.ex.heartbeat()
        self.events.extend(self.ex.get_event_buffer().items())

    def states(self, key) -> list:
        return [state for k, (state, _) in self.events if k == key]

    def run_until_finished(self, keys, timeout: float = TIMEOUT) -> None:
        done = {TaskInstanceState.SUCCESS, TaskInstanceState.FAILED}
        assert wait_for(lambda: all(set(self.states(k)) & done for k in keys), timeout, self.step), (
            f"not every task finished within {timeout}s: {[(k.task_id, self.states(k)) for k in keys]}"
        )


def workers_of(executor: LocalExecutor) -> list[int]:
    return sorted(executor.workers)


def idle_title(pid: int) -> bool:
    try:
        return psutil.Process(pid).cmdline()[:1] == ["airflow worker -- LocalExecutor: <idle>"]
    except psutil.Error:
        return False


def stop(executor: LocalExecutor) -> None:
    """end() the executor, but fail instead of hanging (unpatched 3.3.2 waits forever on a wedged pool)."""

    def expired(*_):
        raise TimeoutError(f"LocalExecutor.end() did not return within {TIMEOUT}s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(int(TIMEOUT))
    try:
        executor.end()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def runs_dir(tmp_path) -> Path:
    d = tmp_path / "runs"
    d.mkdir()
    return d


@pytest.fixture
def quick_work(monkeypatch, runs_dir):
    """Each workload run leaves one file `<task_id>.<pid>` (so runs can be counted) and succeeds."""

    def run(workload, **kwargs):
        (runs_dir / f"{workload.ti.task_id}.{os.getpid()}").write_text("ran")
        return 0

    monkeypatch.setattr(BaseExecutor, "run_workload", staticmethod(run))


@pytest.fixture
def executors():
    """Executors a test creates; any process they leave behind is killed after the test."""
    created: list[LocalExecutor] = []
    yield created
    for proc in psutil.Process().children(recursive=True):
        try:
            proc.kill()
        except psutil.Error:
            pass


def runs_of(runs_dir: Path, task_id: str) -> int:
    return len(list(runs_dir.glob(f"{task_id}.*")))


def test_sigkill_of_idle_workers_including_the_queue_reader_does_not_wedge_the_pool(
    quick_work, executors, runs_dir, session
):
    ex = LocalExecutor(parallelism=2)
    executors.append(ex)
    ex.start()
    drv = Driver(ex)
    try:
        warm = make_workload("warm")
        ex.queue_workload(warm, session=session)
        drv.run_until_finished([warm.ti.key])
        assert drv.states(warm.ti.key)[-1] == TaskInstanceState.SUCCESS

        # Every worker is idle now; one of them is blocked reading the (3.3.2: shared) queue, holding its lock.
        victims = workers_of(ex)
        assert len(victims) == 2
        assert wait_for(lambda: all(idle_title(pid) for pid in victims))
        time.sleep(0.5)  # from the title to the read: a few bytecodes; make sure they are blocked in it
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        for pid in victims:
            assert wait_for(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie")

        later = [make_workload(f"later_{i}") for i in range(5)]
        for w in later:
            ex.queue_workload(w, session=session)
        drv.run_until_finished([w.ti.key for w in later])
        assert {drv.states(w.ti.key)[-1] for w in later} == {TaskInstanceState.SUCCESS}
        assert [runs_of(runs_dir, w.ti.task_id) for w in later] == [1] * 5
        assert len(ex.workers) == 2 and not set(ex.workers) & set(victims)
    finally:
        stop(ex)
    assert ex.workers == {}


def test_workload_sent_to_a_worker_that_dies_before_starting_it_is_requeued_not_lost(
    quick_work, executors, runs_dir, session
):
    ex = LocalExecutor(parallelism=2)
    executors.append(ex)
    ex.start()
    drv = Driver(ex)
    try:
        victims = workers_of(ex)
        assert len(victims) == 2
        # Frozen workers can take nothing off their channel (or the shared queue): the workloads wait there.
        for pid in victims:
            os.kill(pid, signal.SIGSTOP)
        batch = [make_workload(f"queued_{i}") for i in range(3)]
        for w in batch:
            ex.queue_workload(w, session=session)
        drv.step()
        for pid in victims:
            os.kill(pid, signal.SIGKILL)

        drv.run_until_finished([w.ti.key for w in batch])
        assert [drv.states(w.ti.key)[-1] for w in batch] == [TaskInstanceState.SUCCESS] * 3
        # Run exactly once each: re-queued, neither lost nor duplicated.
        assert [runs_of(runs_dir, w.ti.task_id) for w in batch] == [1, 1, 1]
    finally:
        stop(ex)


def test_a_worker_that_finishes_takes_the_next_queued_workload_without_waiting_for_sync(
    quick_work, executors, runs_dir, session
):
    """
    One worker, two workloads handed over while it is busy, then no further sync(): both run. The worker
    gets the next workload when it reports its result, as it did from the shared queue, not on the scheduler's
    next loop (which, with short tasks, left workers idle for most of the time).
    """
    ex = LocalExecutor(parallelism=1)
    executors.append(ex)
    ex.start()
    drv = Driver(ex)
    try:
        [worker] = workers_of(ex)
        # Two: one for the worker and one waiting, as many as the executor takes with 3.3.2 0018.
        batch = [make_workload(f"in_turn_{i}") for i in range(2)]
        for w in batch:
            ex.queue_workload(w, session=session)
        os.kill(worker, signal.SIGSTOP)  # busy, as far as the executor can tell: it reports nothing
        try:
            for _ in batch:
                drv.step()  # LocalExecutor takes `parallelism` workloads per heartbeat
        finally:
            os.kill(worker, signal.SIGCONT)
        assert not ex.queued_tasks, "the executor did not take both"
        assert wait_for(lambda: all(runs_of(runs_dir, w.ti.task_id) == 1 for w in batch)), (
            f"ran without a further sync(): {[runs_of(runs_dir, w.ti.task_id) for w in batch]}"
        )
        drv.run_until_finished([w.ti.key for w in batch])
        assert [drv.states(w.ti.key)[-1] for w in batch] == [TaskInstanceState.SUCCESS] * 2
    finally:
        stop(ex)


@pytest.fixture
def heartbeat_task(monkeypatch, tmp_path):
    """
    The workload runner forks a task process the way the task SDK's supervisor does (child in its own process
    group, announced by fork) and waits for it. The task process writes a growing counter to
    `<task_id>.beat` every 20 ms, forever, and its pid to `<task_id>.pid`.
    """
    beats = tmp_path / "beats"
    beats.mkdir()

    def run(workload, **kwargs):
        task_id = workload.ti.task_id
        pid = os.fork()
        if pid == 0:
            try:
                os.setpgid(0, 0)
                (beats / f"{task_id}.pid").write_text(str(os.getpid()))
                n = 0
                while True:
                    n += 1
                    tmp = beats / f"{task_id}.beat.tmp"
                    tmp.write_text(str(n))
                    os.replace(tmp, beats / f"{task_id}.beat")
                    time.sleep(0.02)
            finally:
                os._exit(0)
        try:
            os.setpgid(pid, pid)
        except OSError:
            pass
        os.waitpid(pid, 0)
        return 0

    monkeypatch.setattr(BaseExecutor, "run_workload", staticmethod(run))
    yield beats
    for pid_file in beats.glob("*.pid"):  # orphaned task processes (unpatched: nobody kills them)
        try:
            os.killpg(int(pid_file.read_text()), signal.SIGKILL)
        except (OSError, ValueError):
            pass


def test_sigkill_of_busy_worker_kills_its_task_before_reporting_failure(heartbeat_task, executors, session, capfd):
    beats = heartbeat_task
    ex = LocalExecutor(parallelism=2)
    executors.append(ex)
    ex.start()
    drv = Driver(ex)
    try:
        busy = make_workload("busy")
        ex.queue_workload(busy, session=session)
        beat_file = beats / "busy.beat"
        assert wait_for(beat_file.exists, step=drv.step), "the task process never started"
        task_pid = int((beats / "busy.pid").read_text())
        task = psutil.Process(task_pid)
        worker_pid = task.ppid()
        assert worker_pid in ex.workers
        assert os.getpgid(task_pid) == task_pid, "the task process leads its own process group"

        os.kill(worker_pid, signal.SIGKILL)

        reported: dict = {}

        def step():
            drv.step()
            if drv.states(busy.ti.key)[-1:] == [TaskInstanceState.FAILED] and not reported:
                # The instant the failure is visible to the scheduler: the old try must be gone already.
                reported["task_running"] = task.is_running() and task.status() != psutil.STATUS_ZOMBIE
                reported["beat"] = beat_file.read_text()

        assert wait_for(lambda: bool(reported), step=step), (
            f"the dead worker's task was never reported failed: {drv.states(busy.ti.key)}"
        )
        assert reported["task_running"] is False, "the task process was still running when its failure was reported"
        # The task process wrote every 20 ms while it lived: 50 beats' worth of time without a single write
        # shows it is gone, not merely slow.
        time.sleep(1.0)
        assert beat_file.read_text() == reported["beat"], "the old try kept running after the failure report"
        assert drv.states(busy.ti.key).count(TaskInstanceState.FAILED) == 1
        logged = capfd.readouterr().out
        assert f"Killing process group {task_pid} of {busy.ti.key}, left by dead worker pid={worker_pid}" in logged

        # The pool is whole again and runs the retry.
        retry = make_workload("retry")
        ex.queue_workload(retry, session=session)
        assert wait_for(lambda: (beats / "retry.beat").exists(), step=drv.step)
        assert len(ex.workers) == 2 and worker_pid not in ex.workers
        retry_pid = int((beats / "retry.pid").read_text())
        os.killpg(retry_pid, signal.SIGKILL)  # let the retry's runner return, so that end() does not wait
        drv.run_until_finished([retry.ti.key])
    finally:
        stop(ex)


def test_crash_looping_worker_is_respawned_with_backoff_and_logged(monkeypatch, executors, capfd):
    from airflow.executors import local_executor

    def crash(**kwargs):
        os._exit(3)

    monkeypatch.setattr(local_executor, "_run_worker", crash)
    ex = LocalExecutor(parallelism=1)
    executors.append(ex)
    spawned: list[int] = []
    real_spawn = ex._spawn_worker

    def counting_spawn():
        real_spawn()
        spawned.append(1)

    monkeypatch.setattr(ex, "_spawn_worker", counting_spawn)
    pattern = re.compile(
        r"LocalExecutor worker pid=\d+ died [\d.]+s after it started(?: \(exit code 3\))?, (\d+) time\(s\) in a row;"
        r" next worker in (\d+)s"
    )
    logged: list[str] = []

    def crashes() -> list[tuple[int, int]]:
        logged.append(capfd.readouterr().out)
        return [tuple(map(int, m.groups())) for m in pattern.finditer("".join(logged))]

    ex.start()
    # 1 + 2 + 4 s of backoff before the fourth crash
    assert wait_for(lambda: len(crashes()) >= 4, step=ex.sync, timeout=TIMEOUT + 7), crashes()
    assert crashes()[:4] == [(1, 1), (2, 2), (3, 4), (4, 8)]
    # Never more than one spawn per crash: the backoff holds the next spawn back.
    assert len(spawned) <= len(crashes()) + 1
