"""End-to-end: the real `airflow api-server`, `dag-processor` and `scheduler` (LocalExecutor) of the venv under test.

One stack per backend is shared by all tests of this module (module-scoped fixture); the tests run in file order:
burst and workers under load, the two SIGKILL fault injections (the worker one needs load: unpatched
LocalExecutor only forks a replacement when work is queued), then the memory test pauses the busy DAG so the
workers go idle, and the last test takes the scheduler down with SIGTERM. Aging: the harness's sitecustomize runs gc.collect() every AGE seconds in
every forked child (LocalExecutor workers, parse processes) -- that is what makes the copy-on-write cost of a
worker visible in minutes instead of hours.
"""

from __future__ import annotations

import os
import signal
import time
from datetime import UTC, datetime
from pathlib import Path

import psutil
import pytest
from memseries.stack import EXAMPLE_DAGS, Stack, StackConfig, mib, postgres_unreachable, tail

HERE = Path(__file__).resolve().parent
PARALLELISM = 3
AGE = 5.0  # seconds between forced full collections in forked children
#: a worker's USS may grow by this much from its fork to after >= 2 forced full collections. Unpatched 3.1.3
#: copies (most of) the scheduler's heap into every worker on its first full collection (USS ~3-10 -> ~88 MiB
#: measured here, +80..88); with the GC freeze before forking it grows by 20-38 MiB (what its own tasks import
#: and allocate: the task supervisor, the operators...).
USS_GROWTH_BOUND_MIB = 55.0
BUSY_DAG = "memseries_busy_bash"
FAULT_DAG = "memseries_e2e_fault"
SLOW_PARSE_DAG = "memseries_e2e_slow_parse"


@pytest.fixture(scope="module")
def stack(e2e_venv, e2e_backend, tmp_path_factory):
    if e2e_backend == "postgres" and (reason := postgres_unreachable()):
        pytest.skip(reason)
    marks = tmp_path_factory.mktemp(f"marks-{e2e_backend}")
    cfg = StackConfig(
        venv=e2e_venv,
        label=f"e2e-{e2e_backend}",
        backend=e2e_backend,
        parallelism=PARALLELISM,
        dags=[
            EXAMPLE_DAGS / "busy_bash.py",
            HERE / "dags" / "e2e_fault.py",
            HERE / "dags" / "e2e_slow_parse.py",
        ],
        age_interval=AGE,
        config={
            ("scheduler", "task_instance_heartbeat_timeout"): "20",
            ("dag_processor", "min_file_process_interval"): "6",
        },
        env={"MEMSERIES_E2E_MARK_DIR": str(marks), "MEMSERIES_E2E_SLOW_PARSE_SECONDS": "3"},
    )
    st = Stack(cfg, log=print)
    st.marks = marks  # type: ignore[attr-defined]
    try:
        st.start()
        st.start_sampler(interval=2.0, roles=["worker", "scheduler", "dag-processor"])
        yield st
    except BaseException:
        _dump_logs(st)
        raise
    finally:
        st.stop()
        # nothing of the stack may survive it
        assert not st.leftovers(), f"processes survived the stack: {st.leftovers()}"


def _dump_logs(st: Stack) -> None:
    for name, path in st.logfiles.items():
        print(f"----- {name} log (tail) -----\n{tail(path, 40)}")


@pytest.fixture
def logs_on_failure(stack, request):
    yield
    if getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed:
        _dump_logs(stack)


def _states(stack: Stack, dag_id: str) -> dict[str, int]:
    rows = stack.query(
        "SELECT state, count(*) FROM task_instance WHERE dag_id = %s GROUP BY state", (dag_id,)
    )
    return {str(s): n for s, n in rows}


def _to_epoch(value) -> float:
    if value is None:
        return 0.0
    if isinstance(value, str):  # SQLite stores naive UTC
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


def test_burst_of_task_runs_all_succeed(stack, logs_on_failure):
    counts = stack.wait_for_task_runs(24, timeout=240, dag_prefix=BUSY_DAG)
    states = _states(stack, BUSY_DAG)
    print("busy DAG task instances by state:", states)
    assert states.get("success", 0) >= 24
    assert not states.get("failed") and not states.get("up_for_retry"), states
    assert counts.get("retried", 0) == 0


def _child_or_grandchild(pid: int, ancestor: int) -> bool:
    """`pid`'s parent is `ancestor`, or its parent's parent is (a zygote in between)."""
    try:
        parent = psutil.Process(pid).ppid()
        return parent == ancestor or psutil.Process(parent).ppid() == ancestor
    except psutil.Error:
        return False


def test_local_executor_runs_parallelism_workers(stack, logs_on_failure):
    sched = stack.procs["scheduler"].pid
    stack.wait_for(lambda: len(stack.workers()) == PARALLELISM, 60, f"{PARALLELISM} LocalExecutor workers")
    workers = stack.workers()
    # forked by the scheduler, or (3.3.2 series) by the LocalExecutor zygote the scheduler started
    assert all(_child_or_grandchild(w.pid, sched) for w in workers), [(w.pid, w.ppid) for w in workers]
    # never more than `parallelism` at once over the whole run so far
    per_t: dict[float, int] = {}
    for s in stack.sampler.snapshot():
        if s.role == "worker":
            per_t[s.t] = per_t.get(s.t, 0) + 1
    assert max(per_t.values(), default=0) <= PARALLELISM, per_t


def test_sigkill_parse_process_file_parsed_on_later_loop(stack, logs_on_failure):
    marks: Path = stack.marks  # type: ignore[attr-defined]
    dagproc = stack.procs["dag-processor"].pid

    def parsing_now():
        for f in marks.glob("slow_parse.*"):
            pid = int(f.name.split(".")[1])
            try:
                if _child_or_grandchild(pid, dagproc):  # the parse zygote forks them on the 3.3.2 series
                    return pid
            except psutil.Error:
                continue
        return None

    stack.wait_for(lambda: parsing_now() is not None, 90, "a parse process on the slow DAG file", poll=0.3)
    victim = parsing_now()
    assert victim
    os.kill(victim, signal.SIGKILL)
    killed_at = time.time()
    print(f"SIGKILL parse process {victim}")

    def parsed_after_kill():
        rows = stack.query("SELECT last_parsed_time FROM dag WHERE dag_id = %s", (SLOW_PARSE_DAG,))
        return bool(rows) and _to_epoch(rows[0][0]) > killed_at

    stack.wait_for(parsed_after_kill, 120, "the slow DAG file to be parsed again after the kill")
    later = [int(f.name.split(".")[1]) for f in marks.glob("slow_parse.*")]
    assert any(p != victim for p in later)
    assert stack.procs["dag-processor"].poll() is None, "dag-processor died"


def test_sigkill_worker_running_a_task(stack, logs_on_failure):
    res = stack.airflow_cli("dags", "trigger", FAULT_DAG)
    assert res.returncode == 0, res.stdout + res.stderr

    def victim_worker():
        rows = stack.query(
            "SELECT id FROM task_instance WHERE dag_id = %s AND state = 'running'", (FAULT_DAG,)
        )
        if not rows:
            return None
        ti_id = str(rows[0][0]).replace("-", "").lower()  # SQLite keeps UUIDs as 32 hex digits
        for w in stack.workers():
            if w.title.replace("-", "").lower().endswith(ti_id):
                return w
        return None

    stack.wait_for(lambda: victim_worker() is not None, 150, "the fault task running in a worker")
    victim = victim_worker()
    assert victim is not None
    print(f"SIGKILL worker {victim.pid}: {victim.title}")
    os.kill(victim.pid, signal.SIGKILL)
    killed_at = time.time()

    # the worker is replaced (LocalExecutor spawns a new one while work is queued)
    stack.wait_for(
        lambda: len([w for w in stack.workers() if w.pid != victim.pid]) == PARALLELISM,
        90,
        "a replacement worker",
    )
    # the task fails (or goes up for retry) and then succeeds on retry; nothing stays queued/running
    stack.wait_for(
        lambda: _states(stack, FAULT_DAG) == {"success": 1}, 180, "the fault task to succeed on retry"
    )
    tries = stack.query(
        "SELECT try_number, state FROM task_instance_history WHERE dag_id = %s ORDER BY try_number",
        (FAULT_DAG,),
    )
    final = stack.query("SELECT try_number, state FROM task_instance WHERE dag_id = %s", (FAULT_DAG,))
    print(f"fault task: earlier tries {tries}, final {final}, {time.time() - killed_at:.0f}s after the kill")
    assert tries and str(tries[0][1]) in ("failed", "up_for_retry"), tries
    assert final[0][0] >= 2 and final[0][1] == "success", final
    stuck = stack.query(
        "SELECT state, count(*) FROM task_instance WHERE dag_id = %s AND state IN ('queued', 'running') "
        "GROUP BY state",
        (FAULT_DAG,),
    )
    assert not stuck, stuck


def _drained(stack: Stack) -> bool:
    rows = stack.query("SELECT count(*) FROM task_instance WHERE state IN ('queued', 'running')")
    return rows[0][0] == 0


def _worker_growth(
    stack: Stack, since: float, min_collections: int = 2
) -> dict[int, tuple[float, float, int]]:
    """pid -> (USS MiB right after the fork, USS MiB after >= min_collections forced collections, collections).

    The first number is measured by the worker itself as it starts (the harness's sitecustomize). For the second
    only samples where the worker had no child are used: while it has forked a task process, the pages they
    share are not unique to the worker and its USS drops by however much the two share.
    """
    log = stack.collection_log()
    at_fork = stack.fork_uss()
    out = {}
    for pid, samples in stack.sampler.by_pid().items():
        samples = [s for s in samples if s.role == "worker" and s.children == 0]
        if not samples or pid not in at_fork:
            continue
        colls = [w for w, _ in log.get(pid, []) if w > since]
        if len(colls) < min_collections:
            continue
        after = [s for s in samples if s.wall > colls[min_collections - 1]]
        if after:
            out[pid] = (mib(at_fork[pid]), mib(max(s.uss for s in after)), len(log.get(pid, [])))
    return out


def test_worker_uss_growth_bounded_after_full_collections(stack, logs_on_failure):
    """The memory claim of the LocalExecutor GC-freeze patch, on the real stack (fails on unpatched 3.1.3).

    Each worker measures its own USS right after it is forked. The busy DAG is then paused (and stays paused for
    the rest of the module) so that the workers go idle (no task process sharing their pages), and each must
    run >= 2 more forced full collections.
    """
    # self-contained, so `-k uss_growth` alone works (make prove runs it on the unpatched base)
    stack.wait_for_task_runs(3 * PARALLELISM, timeout=240, dag_prefix=BUSY_DAG)
    stack.wait_for(lambda: len(stack.workers()) == PARALLELISM, 60, f"{PARALLELISM} LocalExecutor workers")
    stack.set_paused(BUSY_DAG)
    stack.wait_for(lambda: _drained(stack), 120, "the busy DAG to drain")
    idle_since = time.time()
    workers = {w.pid for w in stack.workers()}
    stack.wait_for(
        lambda: workers <= set(_worker_growth(stack, idle_since)),
        4 * AGE + 30,
        "idle workers aged by >= 2 full collections",
    )
    growth = {pid: g for pid, g in _worker_growth(stack, idle_since).items() if pid in workers}
    for pid, (u0, u1, n) in sorted(growth.items()):
        print(f"worker {pid}: USS {u0:.1f} -> {u1:.1f} MiB (+{u1 - u0:.1f}) after {n} forced collections")
    assert len(growth) == PARALLELISM
    worst = max(u1 - u0 for u0, u1, _ in growth.values())
    assert worst < USS_GROWTH_BOUND_MIB, (
        f"a LocalExecutor worker's USS grew by {worst:.1f} MiB after forced full collections "
        f"(bound {USS_GROWTH_BOUND_MIB} MiB): the scheduler's heap was copied on write into the worker"
    )


def test_no_task_instance_left_queued_or_running(stack, logs_on_failure):
    stack.set_paused(BUSY_DAG)
    stack.wait_for(lambda: _drained(stack), 120, "no task instance queued or running")
    counts = stack.task_counts()
    print("all task instances by state:", counts)
    assert not counts.get("failed"), counts


def test_sigterm_scheduler_workers_exit_no_orphans(stack, logs_on_failure):
    sched = stack.procs["scheduler"]
    children = psutil.Process(sched.pid).children(recursive=True)
    workers = [p for p in children if p.pid in {w.pid for w in stack.workers()}]
    assert workers, "no LocalExecutor workers to check"
    # A task process whose worker an earlier test SIGKILLed is already orphaned (reparented, still in the
    # scheduler's session) and finishes its task on its own time; it is not what this test is about.
    tree = {p.pid for p in children}
    earlier_orphans = {p.pid for p in stack.leftovers() if _sid(p.pid) == sched.pid and p.pid not in tree}
    earlier_orphans.discard(sched.pid)
    os.kill(sched.pid, signal.SIGTERM)  # the scheduler alone, not its process group
    sched.wait(timeout=90)
    _gone, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, f"scheduler's children still alive after it exited on SIGTERM: {alive}"
    sid_left = [p for p in stack.leftovers() if _sid(p.pid) == sched.pid and p.pid not in earlier_orphans]
    assert not sid_left, f"orphans of the scheduler: {sid_left}"


def _sid(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except ProcessLookupError:
        return None
