"""LocalExecutor forks its workers in batches under one gc.freeze() (patch 0001, upstream #58365).

Real LocalExecutor, real forked (or spawned) worker processes, real queues. The function a worker runs for a
task (`local_executor._execute_work`, which calls the task SDK's supervise()) is replaced before `start()` by
one that forks a real task process and waits for it, as supervise() does, minus the API server; forked workers
inherit the replacement. The spawn test runs the real `_execute_work`. Mocks only record gc.collect/freeze/
unfreeze and forks in this process, or inject a fork that raises.
"""

from __future__ import annotations

import gc
import json
import multiprocessing
import multiprocessing.process
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
import weakref

import pytest
from airflow.executors import local_executor, workloads
from airflow.executors.local_executor import LocalExecutor
from airflow.utils.state import TaskInstanceState

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="fork and /proc based")


def make_workload(n: int) -> workloads.ExecuteTask:
    return workloads.ExecuteTask(
        token="",
        ti=workloads.TaskInstance(
            id=uuid.uuid4(),
            dag_version_id=uuid.uuid4(),
            task_id=f"task_{n}",
            dag_id="local_executor_gc_freeze",
            run_id="manual__1",
            try_number=1,
            pool_slots=1,
            queue="default",
            priority_weight=1,
        ),
        dag_rel_path="local_executor_gc_freeze.py",
        bundle_info=workloads.BundleInfo(name="dags-folder"),
        log_path=None,
    )


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.05, step=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if step:
            step()
        if predicate():
            return True
        time.sleep(interval)
    return False


def run_until_events(executor: LocalExecutor, keys, timeout: float = 30.0) -> dict:
    """Drive the executor like the scheduler does until it has reported every key; return the events."""
    events: dict = {}

    def step():
        executor.heartbeat()
        events.update(executor.get_event_buffer())

    assert wait_for(lambda: set(keys) <= set(events), timeout=timeout, step=step), (
        f"executor reported {events} but not all of {keys}"
    )
    return events


@pytest.fixture
def calls(monkeypatch):
    """Ordered record of gc.collect / gc.freeze / fork / gc.unfreeze in this (the executor's) process."""
    log: list[str] = []
    real_collect, real_freeze, real_unfreeze = gc.collect, gc.freeze, gc.unfreeze
    real_start = multiprocessing.process.BaseProcess.start
    parent = os.getpid()

    def collect(*args, **kwargs):
        if os.getpid() == parent:
            log.append("collect")
        return real_collect(*args, **kwargs)

    def freeze():
        log.append("freeze")
        real_freeze()

    def unfreeze():
        log.append("unfreeze")
        real_unfreeze()

    def start(self):
        real_start(self)
        if os.getpid() == parent:
            log.append("fork")

    monkeypatch.setattr(gc, "collect", collect)
    monkeypatch.setattr(gc, "freeze", freeze)
    monkeypatch.setattr(gc, "unfreeze", unfreeze)
    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start", start)
    return log


@pytest.fixture
def executors():
    """Executors created by a test; any worker still alive afterwards is killed (tests call end() normally)."""
    created: list[LocalExecutor] = []
    yield created
    for ex in created:
        for proc in list(getattr(ex, "workers", {}).values()):
            try:
                if proc.is_alive():
                    proc.kill()
                    proc.join(5)
            except ValueError:  # already closed
                pass


def _fork_task_process(log, workload):
    """What supervise() does with processes, without an API server: fork the task process, wait for it."""
    pid = os.fork()
    if pid == 0:
        os._exit(0)  # the task: succeeds at once
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"task process exited with {status}")


@pytest.fixture
def quick_work(monkeypatch):
    """Workers run every task in a real forked task process that succeeds at once (no API server needed)."""
    monkeypatch.setattr(local_executor, "_execute_work", _fork_task_process)


def alive_workers(executor: LocalExecutor) -> list[int]:
    return [pid for pid, proc in executor.workers.items() if proc.is_alive()]


@pytest.mark.parametrize("parallelism", [1, 3])
def test_start_forks_whole_pool_in_one_frozen_batch(parallelism, calls, executors, quick_work):
    ex = LocalExecutor(parallelism=parallelism)
    executors.append(ex)
    ex.start()
    try:
        assert calls == ["collect", "freeze", *["fork"] * parallelism, "unfreeze"]
        assert len(alive_workers(ex)) == parallelism
        assert gc.get_freeze_count() == 0, "the scheduler's GC must not stay frozen"
    finally:
        ex.end()


def test_full_pool_runs_tasks_without_freezing_again(calls, executors, quick_work, session):
    ex = LocalExecutor(parallelism=2)
    executors.append(ex)
    ex.start()
    try:
        pool = set(ex.workers)
        calls.clear()
        batch = [make_workload(i) for i in range(5)]
        for w in batch:
            ex.queue_workload(w, session=session)
        events = run_until_events(ex, [w.ti.key for w in batch])
        assert {state for state, _ in events.values()} == {TaskInstanceState.SUCCESS}
        assert calls == [], "nothing to spawn must mean nothing frozen"
        assert set(ex.workers) == pool
    finally:
        ex.end()


def test_garbage_is_collected_not_frozen_into_workers(executors, quick_work):
    class Node:
        pass

    gc.disable()  # only explicit collections from here on
    try:
        node = Node()
        node.cycle = node  # unreachable after `del`: reclaimable only by the cycle collector
        ref = weakref.ref(node)
        del node
        assert ref() is not None
        ex = LocalExecutor(parallelism=1)
        executors.append(ex)
        ex.start()
        try:
            # collected before the freeze: frozen, it would have lived on in every worker for its whole life
            assert ref() is None
            assert len(alive_workers(ex)) == 1
        finally:
            ex.end()
    finally:
        gc.enable()


def test_parallelism_zero_is_rejected_as_in_3_1_3():
    # 3.1.3's BaseExecutor refuses parallelism <= 0 (config.yml: "must be larger or equal 1"); unchanged.
    with pytest.raises(ValueError, match="parallelism"):
        LocalExecutor(parallelism=0)


def test_fork_raising_mid_batch_unfreezes_and_executor_recovers(
    calls, executors, quick_work, monkeypatch, session
):
    counting_start = multiprocessing.process.BaseProcess.start
    n = {"forks": 0}

    def flaky_start(self):
        n["forks"] += 1
        if n["forks"] == 2:
            raise OSError(11, "Resource temporarily unavailable (injected)")
        counting_start(self)

    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start", flaky_start)
    ex = LocalExecutor(parallelism=3)
    executors.append(ex)
    with pytest.raises(OSError, match="injected"):
        ex.start()
    try:
        assert calls[:2] == ["collect", "freeze"] and calls[-1] == "unfreeze"
        assert calls.count("freeze") == calls.count("unfreeze") == 1
        assert gc.get_freeze_count() == 0, "a fork that raised left the scheduler's GC frozen"
        assert len(alive_workers(ex)) == 1, "the worker forked before the failure is tracked"

        # Forks work again: the next check refills the pool in one frozen batch and tasks run.
        monkeypatch.setattr(multiprocessing.process.BaseProcess, "start", counting_start)
        calls.clear()
        w = make_workload(0)
        ex.queue_workload(w, session=session)
        events = run_until_events(ex, [w.ti.key])
        assert events[w.ti.key][0] == TaskInstanceState.SUCCESS
        assert calls == ["collect", "freeze", "fork", "fork", "unfreeze"]
        assert len(alive_workers(ex)) == 3
    finally:
        ex.end()
    assert gc.get_freeze_count() == 0


def test_sigkilled_worker_is_replaced_in_one_frozen_batch(
    calls, executors, monkeypatch, tmp_path, session
):
    def blocking_work(log, workload):
        (tmp_path / f"{workload.ti.task_id}.pid").write_text(str(os.getpid()))
        if workload.ti.task_id == "task_0":
            time.sleep(120)  # in the worker itself, until SIGKILLed: this test is about the worker

    monkeypatch.setattr(local_executor, "_execute_work", blocking_work)
    ex = LocalExecutor(parallelism=2)
    executors.append(ex)
    ex.start()
    try:
        victim_task = make_workload(0)
        ex.queue_workload(victim_task, session=session)
        ex.heartbeat()
        pid_file = tmp_path / "task_0.pid"
        assert wait_for(pid_file.exists, timeout=30), "no worker picked the task up"
        victim = int(pid_file.read_text())
        assert victim in ex.workers

        calls.clear()
        os.kill(victim, signal.SIGKILL)
        events: dict = {}

        def step():
            ex.sync()
            events.update(ex.get_event_buffer())

        assert wait_for(lambda: victim not in ex.workers, timeout=15, step=step), "dead worker never reaped"
        # Replaced on that same check, all in one frozen batch.
        assert calls == ["collect", "freeze", "fork", "unfreeze"]
        assert len(alive_workers(ex)) == 2 and victim not in alive_workers(ex)
        assert gc.get_freeze_count() == 0
        # (What happens to its task is the next patch's concern: test_local_executor_dead_worker.py.)

        # The executor keeps working with the replacement pool.
        after = make_workload(1)
        ex.queue_workload(after, session=session)
        assert run_until_events(ex, [after.ti.key])[after.ti.key][0] == TaskInstanceState.SUCCESS
    finally:
        ex.end()


@pytest.fixture
def spawn_start_method():
    previous = multiprocessing.get_start_method(allow_none=True)
    multiprocessing.set_start_method("spawn", force=True)
    try:
        yield
    finally:
        multiprocessing.set_start_method(previous, force=True)


def test_spawn_stays_lazy_and_never_freezes(spawn_start_method, calls, executors, monkeypatch, session):
    # Spawned workers re-import Airflow and run the real _execute_work: an invalid execution API URL makes
    # supervise() fail at once, so the task comes back FAILED without needing an API server.
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTION_API_SERVER_URL", "ftp://nowhere/execution/")
    ex = LocalExecutor(parallelism=2)
    executors.append(ex)
    ex.start()
    try:
        assert ex.workers == {}, "spawn must not create workers up front"
        w = make_workload(0)
        ex.queue_workload(w, session=session)
        ex.trigger_tasks(ex.parallelism)
        assert len(ex.workers) == 1, "spawn creates one worker per check"
        # Only read results here: a full sync() while the worker is still importing Airflow would (as in
        # 3.1.3) start a second one for the still-unread task, which just makes this test slower.
        events: dict = {}

        def step():
            ex._read_results()
            events.update(ex.get_event_buffer())

        assert wait_for(lambda: w.ti.key in events, timeout=60, step=step, interval=0.2)
        assert events[w.ti.key][0] == TaskInstanceState.FAILED
        assert len(ex.workers) == 1
        assert not {"collect", "freeze", "unfreeze"} & set(calls)
    finally:
        ex.end()


def test_start_method_is_not_fixed_globally(tmp_path):
    """Importing, creating and starting the executor leaves multiprocessing's global start method unset."""
    script = textwrap.dedent(
        """
        import json, multiprocessing
        from airflow.executors.local_executor import LocalExecutor
        after_import = multiprocessing.get_start_method(allow_none=True)
        ex = LocalExecutor(parallelism=1)
        ex.start()
        workers = len(ex.workers)
        ex.end()
        print(json.dumps({"after_import": after_import, "after_start": multiprocessing.get_start_method(
            allow_none=True), "workers": workers}))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=tmp_path, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["after_import"] is None
    assert result["after_start"] is None, "the executor fixed the process-wide start method"
    # Platform default on Linux with Python < 3.14 is fork: the pool is created up front.
    expected = 1 if multiprocessing.get_all_start_methods()[0] == "fork" else 0
    assert result["workers"] == expected
