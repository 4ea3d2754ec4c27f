"""LocalExecutor workers are forked from a frozen, pre-warmed zygote (3.3.2 patch 0008).

Real LocalExecutor, real processes, and the real task path of a worker (`BaseExecutor.run_workload` ->
the task SDK's `supervise_task`) up to the point where it would talk to the API server: the execution API
URL is made invalid (`ftp://`), so the supervisor is imported and the workload fails at once, as FAILED,
without a server. Memory is each worker's USS (private memory), read with psutil.
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import os
import signal
import sys
import time
import uuid

import psutil
import pytest
from airflow.executors import workloads
from airflow.executors.base_executor import BaseExecutor
from airflow.executors.local_executor import LocalExecutor
from airflow.utils.state import TaskInstanceState

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="fork and /proc based")

MB = 1024 * 1024
# Generous: what the waits cover is a fork (or a forkserver start that imports Airflow) and a few syncs.
TIMEOUT = 120.0


def make_workload(task_id: str) -> workloads.ExecuteTask:
    return workloads.ExecuteTask(
        token="",
        ti=workloads.TaskInstance(
            id=uuid.uuid4(),
            dag_version_id=uuid.uuid4(),
            task_id=task_id,
            dag_id="local_executor_zygote",
            run_id="manual__1",
            try_number=1,
            pool_slots=1,
            queue="default",
            priority_weight=1,
        ),
        dag_rel_path="local_executor_zygote.py",
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


def run_until_finished(ex: LocalExecutor, keys) -> dict:
    events: dict = {}

    def step():
        ex.heartbeat()
        events.update(ex.get_event_buffer())

    assert wait_for(lambda: set(keys) <= set(events), step=step), f"not finished: {events}"
    return events


def uss(pid: int) -> int:
    return psutil.Process(pid).memory_full_info().uss


def worker_pids() -> list[int]:
    """LocalExecutor workers anywhere below this process (their parent is the zygote, not the scheduler)."""
    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.cmdline()[:1] and proc.cmdline()[0].startswith("airflow worker -- LocalExecutor:"):
                found.append(proc.pid)
        except psutil.Error:
            pass
    return sorted(found)


@pytest.fixture(autouse=True)
def no_api_server(monkeypatch):
    # supervise_task() rejects the URL after importing everything the task path imports: FAILED, no server.
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTION_API_SERVER_URL", "ftp://nowhere/execution/")


@pytest.fixture
def cleanup():
    yield
    for proc in psutil.Process().children(recursive=True):
        try:
            proc.kill()
        except psutil.Error:
            pass


def run_task_path(ex: LocalExecutor, session, task_id: str) -> None:
    w = make_workload(task_id)
    ex.queue_workload(w, session=session)
    events = run_until_finished(ex, [w.ti.key])
    assert events[w.ti.key][0] == TaskInstanceState.FAILED


@pytest.fixture
def blocker(monkeypatch, tmp_path):
    """The task `blocker` keeps its worker busy until the worker is killed; every other task runs for real."""
    real = BaseExecutor.run_workload
    started = tmp_path / "blocker.started"

    def run(workload, **kwargs):
        if workload.ti.task_id == "blocker":
            started.write_text(str(os.getpid()))
            time.sleep(3600)
        return real(workload, **kwargs)

    monkeypatch.setattr(BaseExecutor, "run_workload", staticmethod(run))
    return started


def stop(executor: LocalExecutor) -> None:
    """end() the executor, but fail instead of hanging on a pool that can no longer finish."""

    def expired(*_):
        raise TimeoutError(f"LocalExecutor.end() did not return within {TIMEOUT}s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(int(TIMEOUT))
    try:
        executor.end()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_replacement_worker_stays_small_after_the_scheduler_heap_grew(blocker, cleanup, session):
    ex = LocalExecutor(parallelism=1)
    ex.start()
    try:
        run_task_path(ex, session, "first")
        (first,) = list(ex.workers)
        first_uss = uss(first)
        # Kill the worker while it is busy (on 3.3.2 an idle one would take the shared queue's lock with it).
        ex.queue_workload(make_workload("blocker"), session=session)
        assert wait_for(blocker.exists, step=ex.heartbeat)

        # The scheduler's heap grows (and fragments) after start, as it does over hours: every worker forked
        # from it from now on inherits these pages, and its first-use work lands on them.
        grown = [{"id": i, "name": f"object-{i}", "deps": [i, i + 1]} for i in range(400_000)]
        del grown[::2]

        os.kill(first, signal.SIGKILL)
        assert wait_for(lambda: not psutil.pid_exists(first) or psutil.Process(first).status() == "zombie")
        run_task_path(ex, session, "after_replacement")
        (replacement,) = list(ex.workers)
        assert replacement != first
        replacement_uss = uss(replacement)
        del grown
    finally:
        stop(ex)
    print(f"first worker {first_uss / MB:.1f} MB, replacement {replacement_uss / MB:.1f} MB")
    # 3.3.2: the replacement is forked from the grown scheduler and imports the task path itself (22.7 MB
    # measured here, 7.7 MB from the zygote, which has that work done and shared).
    assert replacement_uss < 14 * MB, f"replacement worker USS {replacement_uss / MB:.1f} MB (first {first_uss / MB:.1f})"


def test_dead_zygote_is_replaced_and_tasks_go_on(cleanup, session, capfd):
    ex = LocalExecutor(parallelism=2)
    ex.start()
    try:
        zygote = ex._zygote.pid
        zygote_proc = psutil.Process(zygote)
        assert zygote_proc.cmdline()[:1] == ["airflow zygote -- LocalExecutor"]
        assert zygote_proc.num_threads() == 1, "the zygote must stay single-threaded"
        assert {psutil.Process(pid).ppid() for pid in ex.workers} == {zygote}

        os.kill(zygote, signal.SIGKILL)
        assert wait_for(lambda: ex._zygote.pid not in (None, zygote), step=ex.sync)
        assert f"LocalExecutor zygote pid={zygote} died" in capfd.readouterr().out

        # Workers forked by the dead zygote keep working; a replacement worker comes from the new zygote.
        run_task_path(ex, session, "after_zygote_death")
        victim = min(ex.workers)
        os.kill(victim, signal.SIGKILL)
        assert wait_for(lambda: victim not in ex.workers and len(ex.workers) == 2, step=ex.sync)
        newest = max(ex.workers, key=lambda pid: psutil.Process(pid).create_time())
        assert psutil.Process(newest).ppid() == ex._zygote.pid
        batch = [make_workload(f"later_{i}") for i in range(4)]
        for w in batch:
            ex.queue_workload(w, session=session)
        events = run_until_finished(ex, [w.ti.key for w in batch])
        assert {events[w.ti.key][0] for w in batch} == {TaskInstanceState.FAILED}
    finally:
        stop(ex)
    assert not psutil.pid_exists(zygote) or psutil.Process(zygote).status() == psutil.STATUS_ZOMBIE


def test_scheduler_heap_stays_frozen_so_its_collections_do_not_unshare_the_zygote(cleanup, session):
    """
    The zygote is forked from the scheduler with the scheduler's heap frozen, and the heap stays frozen.

    Unfrozen after the fork (3.3.2 unfreezes right after forking its workers), the scheduler's next full
    collection writes the GC header of every object it had when it forked, and so copies every page it shares
    with the zygote and the workers back into itself: its private memory grows by about its whole heap.
    """
    heap = [{"id": i, "deps": [i]} for i in range(200_000)]  # the scheduler's long-lived heap (~60 MB)
    ex = LocalExecutor(parallelism=1)
    ex.start()
    try:
        run_task_path(ex, session, "first")
        assert gc.get_freeze_count() >= len(heap), "the scheduler's heap is not frozen after start()"
        before = uss(os.getpid())
        gc.collect()
        grown = uss(os.getpid()) - before
    finally:
        stop(ex)
        gc.unfreeze()  # for the tests that run after this one in this process
        del heap
    print(f"scheduler USS grew {grown / MB:.1f} MB over a full collection after start()")
    # Unfrozen (as before): 66.7 MB measured here, the pages of those objects' GC headers; frozen: 0.0 MB.
    assert grown < 8 * MB, f"a full collection in the scheduler copied {grown / MB:.1f} MB it shared"


@pytest.fixture
def forkserver():
    previous = multiprocessing.get_start_method(allow_none=True)
    multiprocessing.set_start_method("forkserver", force=True)
    try:
        yield
    finally:
        multiprocessing.set_start_method(previous, force=True)


def test_forkserver_workers_come_from_the_zygote_and_stay_small(forkserver, cleanup, session):
    ex = LocalExecutor(parallelism=2)
    ex.start()
    try:
        batch = [make_workload(f"fs_{i}") for i in range(4)]
        for w in batch:
            ex.queue_workload(w, session=session)
        events = run_until_finished(ex, [w.ti.key for w in batch])
        assert {events[w.ti.key][0] for w in batch} == {TaskInstanceState.FAILED}
        workers = worker_pids()
        assert len(workers) == 2
        sizes = [uss(pid) for pid in workers]
    finally:
        stop(ex)
    print("forkserver workers:", ", ".join(f"{s / MB:.1f} MB" for s in sizes))
    # 3.3.2 with forkserver: each worker imports Airflow on its own (101 MB measured here; 8 MB from the zygote).
    assert max(sizes) < 14 * MB, f"forkserver worker USS {[round(s / MB, 1) for s in sizes]} MB"


def test_nothing_the_executor_forked_outlives_a_killed_scheduler(cleanup):
    """
    A scheduler killed with SIGKILL (the OOM killer) leaves no zygote and no idle worker behind.

    An orphaned zygote would run for good, and with fork it also holds the scheduler's inherited sockets: a
    PostgreSQL connection whose open transaction keeps its row locks (a dag_run no other scheduler can examine
    again; seen in the fault suite's mixed run). Unpatched 3.3.2's idle workers wait on a queue whose ends they
    hold themselves, so they outlive the scheduler as well.
    """
    read_fd, write_fd = os.pipe()
    scheduler = os.fork()
    if scheduler == 0:  # the "scheduler": start the executor, report what it forked, wait to be killed
        try:
            os.close(read_fd)
            ex = LocalExecutor(parallelism=2)
            ex.start()
            wait_for(lambda: len(psutil.Process().children(recursive=True)) >= 2, step=ex.sync)
            pids = [proc.pid for proc in psutil.Process().children(recursive=True)]
            os.write(write_fd, (" ".join(map(str, pids)) + "\n").encode())
            time.sleep(3600)
        finally:
            os._exit(1)
    os.close(write_fd)
    with os.fdopen(read_fd) as reports:
        forked = [psutil.Process(int(pid)) for pid in reports.readline().split()]
    try:
        assert forked, "the scheduler process reported nothing it forked (starting the executor failed)"
        os.kill(scheduler, signal.SIGKILL)
        os.waitpid(scheduler, 0)
        assert wait_for(lambda: all(map(_gone, forked)), timeout=60, interval=0.5), "outlived the killed " + (
            "scheduler: " + ", ".join(f"{p.pid} {p.cmdline()[:1]}" for p in forked if not _gone(p))
        )
    finally:
        for proc in forked:
            with contextlib.suppress(psutil.Error):
                proc.kill()


def test_no_process_the_executor_forks_holds_the_schedulers_connections(cleanup):
    """
    Neither the zygote nor a worker holds a connection the scheduler had open when it started the executor.

    Held, the scheduler's metadata-DB connection outlives a killed scheduler for as long as any of them runs: its
    open transaction keeps its row locks, among them slot_pool's, which every scheduler's critical section takes
    with NOWAIT -- no scheduler queues a task again (seen on unpatched 3.3.2 in the fault suite's mixed run: two
    idle workers orphaned under PID 1 kept a killed scheduler's connection idle in transaction for the rest of
    the run). A TCP connection to a socket of this test stands for that connection.
    """
    import socket

    with socket.create_server(("127.0.0.1", 0)) as server:
        read_fd, write_fd = os.pipe()
        scheduler = os.fork()
        if scheduler == 0:  # the "scheduler": a connection open, then the executor started
            try:
                os.close(read_fd)
                conn = socket.create_connection(server.getsockname())
                ex = LocalExecutor(parallelism=2)
                ex.start()
                wait_for(lambda: len(psutil.Process().children(recursive=True)) >= 2, step=ex.sync)
                pids = [proc.pid for proc in psutil.Process().children(recursive=True)]
                os.write(write_fd, (" ".join(map(str, [conn.getsockname()[1], *pids])) + "\n").encode())
                time.sleep(3600)
            finally:
                os._exit(1)
        os.close(write_fd)
        with os.fdopen(read_fd) as reports:
            port, *pids = map(int, reports.readline().split() or [0])
        forked = [psutil.Process(pid) for pid in pids]
        try:
            assert forked, "the scheduler process reported nothing it forked (starting the executor failed)"
            holders = [
                f"{p.pid} {p.cmdline()[:1]}"
                for p in forked
                if any(c.laddr and c.laddr.port == port for c in p.net_connections("tcp"))
            ]
            assert not holders, f"hold the scheduler's connection: {', '.join(holders)}"
        finally:
            os.kill(scheduler, signal.SIGKILL)
            os.waitpid(scheduler, 0)
            for proc in forked:
                with contextlib.suppress(psutil.Error):
                    proc.kill()


def _gone(proc: psutil.Process) -> bool:
    try:  # an exited orphan waits for init, its new parent, to reap it: it runs nothing and holds nothing
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
