"""End-to-end: the venv under test scales out with CeleryExecutor -- real Redis broker, PostgreSQL metadata DB and
Celery result backend, `airflow api-server`, `dag-processor`, `scheduler` and two `airflow celery worker`
(distinct hostnames, concurrency 2 each), all started and stopped by memseries.celery_stack (own session per
component, nothing survives the module, not even a Ctrl-C).

One stack is shared by the tests of this module (module-scoped fixture); they run in order, the worker-kill test
last. Venv: --e2e-venv / MEMSERIES_E2E_VENV (default: the patched 3.3.2); the same tests pass on the unpatched
base (nothing here is new behaviour: they prove the series does not break the Celery path).

Settings shortened for the test (see CONFIG below), and why:
- [scheduler] task_instance_heartbeat_timeout 20 s (default 300) / ..._detection_interval 5 s (default 10): the
  tasks of a SIGKILLed worker stop heart-beating; the scheduler fails them after this timeout and their retry
  runs on the surviving worker.
- [scheduler] task_queued_timeout 60 s (default 600) / task_queued_timeout_check_interval 10 s: a message the
  killed worker had taken but not yet started leaves its TI queued; the scheduler re-queues it after this.
- [workers] min_heartbeat_interval 5 s (harness default): a task's supervisor heart-beats at least that often,
  well inside the 20 s timeout even on a loaded 2-core box.
- [dag_processor] min_file_process_interval 5 s: the changed DAG file is re-parsed quickly.
- NOT shortened: the Redis [celery_broker_transport_options] visibility_timeout (the provider's 86400 s).
  With task_acks_late (default) a short visibility timeout makes Redis hand a still-running task's message to
  another worker -- duplicates; Airflow recovers lost tasks through the heartbeat timeout, not the broker.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import psutil
import pytest
from memseries.celery_stack import CeleryOptions, CeleryStack, redis_command
from memseries.stack import StackConfig, postgres_unreachable, tail

HERE = Path(__file__).resolve().parent
DAGS = HERE / "celery_dags"
BURST_DAG = "memseries_celery_burst"
VERSIONED_DAG = "memseries_celery_versioned"
KILL_DAG = "memseries_celery_kill"
CONFIG = {
    ("core", "parallelism"): "8",
    ("scheduler", "task_instance_heartbeat_timeout"): "20",
    ("scheduler", "task_instance_heartbeat_timeout_detection_interval"): "5",
    ("scheduler", "task_queued_timeout"): "60",
    ("scheduler", "task_queued_timeout_check_interval"): "10",
    ("workers", "min_heartbeat_interval"): "5",
    ("dag_processor", "min_file_process_interval"): "5",
    ("dag_processor", "refresh_interval"): "5",
}


@pytest.fixture(scope="module")
def stack(e2e_venv, tmp_path_factory):
    if reason := postgres_unreachable():
        pytest.skip(reason)
    options = CeleryOptions(workers=2, concurrency=2)
    if options.broker_url.startswith("redis"):  # MEMSERIES_CELERY_BROKER may point at RabbitMQ instead
        try:
            redis_command(options.broker_url, ["PING"])
        except Exception as e:  # noqa: BLE001
            pytest.skip(f"Redis broker {options.broker_url} not reachable: {e}")
    marks = tmp_path_factory.mktemp("celery-marks")
    cfg = StackConfig(
        venv=e2e_venv,
        label="e2e-celery",
        backend="postgres",
        parallelism=8,
        dags=[DAGS],
        age_interval=None,  # no memory claim here: spare the CPU
        config=dict(CONFIG),
        env={"MEMSERIES_E2E_MARK_DIR": str(marks)},
    )
    st = CeleryStack(cfg, options, log=print)
    st.marks = marks  # type: ignore[attr-defined]
    try:
        st.start()
        st.wait_dags_parsed([BURST_DAG, VERSIONED_DAG, KILL_DAG])
        yield st
    except BaseException:
        _dump_logs(st)
        raise
    finally:
        st.stop()
        left = st.leftovers()
        assert not left, f"processes survived the stack: {left}"


def _dump_logs(st: CeleryStack, n: int = 40) -> None:
    for name, path in st.logfiles.items():
        print(f"----- {name} log (tail) -----\n{tail(path, n)}")


@contextlib.contextmanager
def dump_logs_on_failure(st: CeleryStack):
    try:
        yield
    except BaseException:
        _dump_logs(st)
        raise


def _tis(st: CeleryStack, dag_id: str, run_id: str | None = None) -> dict[str, dict]:
    """task_id -> current row (state, hostname, try_number, dag_version_id, id) of one run (or all runs)."""
    sql = "SELECT task_id, state, hostname, try_number, dag_version_id, id, run_id FROM task_instance WHERE dag_id = %s"
    params: tuple = (dag_id,)
    if run_id:
        sql += " AND run_id = %s"
        params += (run_id,)
    keys = ("task_id", "state", "hostname", "try_number", "dag_version_id", "id", "run_id")
    out = {}
    for row in st.query(sql, params):
        d = dict(zip(keys, row))
        out[d["task_id"] if run_id else f"{d['run_id']}/{d['task_id']}"] = d
    return out


def _alive(pids) -> list[int]:
    out = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
    return out


def _run_state(st: CeleryStack, dag_id: str, run_id: str) -> str:
    rows = st.query("SELECT state FROM dag_run WHERE dag_id = %s AND run_id = %s", (dag_id, run_id))
    return str(rows[0][0]) if rows else ""


def test_burst_of_task_runs_all_succeed_on_both_workers(stack):
    with dump_logs_on_failure(stack):
        run_ids = [stack.trigger(BURST_DAG) for _ in range(2)]
        stack.wait_for(
            lambda: all(_run_state(stack, BURST_DAG, r) in ("success", "failed") for r in run_ids),
            240,
            "the burst runs to finish",
        )
        tis = _tis(stack, BURST_DAG)
        by_state: dict[str, int] = {}
        by_host: dict[str, int] = {}
        for ti in tis.values():
            by_state[str(ti["state"])] = by_state.get(str(ti["state"]), 0) + 1
            by_host[str(ti["hostname"])] = by_host.get(str(ti["hostname"]), 0) + 1
        print(f"burst: {len(tis)} task instances by state {by_state}, by hostname {by_host}")
        assert len(tis) == 32
        assert by_state == {"success": 32}, by_state
        assert [_run_state(stack, BURST_DAG, r) for r in run_ids] == ["success", "success"]
        # every task ran on one of our two workers, and each worker ran some
        assert set(by_host) <= set(stack.worker_hostnames.values()), by_host
        assert all(by_host.get(h, 0) > 0 for h in stack.worker_hostnames.values()), by_host


def test_dag_changed_while_runs_in_flight(stack):
    """Unfinished TIs move to the new DAG version, finished ones keep theirs, the runs complete."""
    marks: Path = stack.marks  # type: ignore[attr-defined]
    with dump_logs_on_failure(stack):
        run_ids = [stack.trigger(VERSIONED_DAG) for _ in range(2)]

        def holding() -> bool:
            for r in run_ids:
                tis = _tis(stack, VERSIONED_DAG, r)
                if (
                    tis.get("first", {}).get("state") != "success"
                    or tis.get("hold", {}).get("state") != "running"
                ):
                    return False
            return True

        stack.wait_for(holding, 120, "both runs: `first` done and `hold` running")
        versions = stack.query(
            "SELECT id, version_number FROM dag_version WHERE dag_id = %s ORDER BY version_number",
            (VERSIONED_DAG,),
        )
        assert len(versions) == 1, versions
        v1 = versions[0][0]
        before = {r: _tis(stack, VERSIONED_DAG, r) for r in run_ids}
        assert all(t["dag_version_id"] == v1 for tis in before.values() for t in tis.values())

        # change the DAG: version 2 adds a task after `last`
        dag_file = stack.dags_dir / f"{VERSIONED_DAG}.py"
        source = dag_file.read_text()
        assert source.count("\nVERSION = 1\n") == 1
        dag_file.write_text(source.replace("\nVERSION = 1\n", "\nVERSION = 2\n"))
        changed_at = time.time()
        stack.wait_for(
            lambda: len(stack.query("SELECT id FROM dag_version WHERE dag_id = %s", (VERSIONED_DAG,))) == 2,
            120,
            "the changed DAG file parsed into a new DAG version",
        )
        v2 = stack.query(
            "SELECT id FROM dag_version WHERE dag_id = %s AND version_number = 2", (VERSIONED_DAG,)
        )[0][0]

        def moved() -> bool:
            for r in run_ids:
                tis = _tis(stack, VERSIONED_DAG, r)
                if "added_in_v2" not in tis:
                    return False
                if any(tis[t]["dag_version_id"] != v2 for t in ("hold", "after", "last", "added_in_v2")):
                    return False
            return True

        stack.wait_for(moved, 90, "the scheduler to move the unfinished task instances to the new version")
        print(f"new DAG version seen and TIs moved {time.time() - changed_at:.0f}s after the change")
        (marks / "release-versioned").write_text("go")
        stack.wait_for(
            lambda: all(_run_state(stack, VERSIONED_DAG, r) in ("success", "failed") for r in run_ids),
            180,
            "the changed runs to finish",
        )
        for r in run_ids:
            tis = _tis(stack, VERSIONED_DAG, r)
            print(r, {t: (d["state"], "v1" if d["dag_version_id"] == v1 else "v2") for t, d in tis.items()})
            assert _run_state(stack, VERSIONED_DAG, r) == "success"
            assert {t: d["state"] for t, d in tis.items()} == dict.fromkeys(
                ("first", "hold", "after", "last", "added_in_v2"), "success"
            )
            # finished before the change: keeps the version it ran with
            assert tis["first"]["dag_version_id"] == v1
            # unfinished at the change (running, or not yet scheduled): moved to the new version
            for t in ("hold", "after", "last", "added_in_v2"):
                assert tis[t]["dag_version_id"] == v2, (r, t)


def test_sigkill_celery_worker_no_task_instance_lost(stack):
    marks: Path = stack.marks  # type: ignore[attr-defined]
    victim, survivor = sorted(stack.worker_hostnames)
    victim_host, survivor_host = stack.worker_hostnames[victim], stack.worker_hostnames[survivor]
    with dump_logs_on_failure(stack):
        run_id = stack.trigger(KILL_DAG)

        def running_on_victim() -> list[dict]:
            tis = _tis(stack, KILL_DAG, run_id)
            return [t for t in tis.values() if t["state"] == "running" and t["hostname"] == victim_host]

        def all_running() -> bool:
            tis = _tis(stack, KILL_DAG, run_id)
            return len(tis) == 4 and all(t["state"] == "running" for t in tis.values())

        stack.wait_for(
            lambda: all_running() and running_on_victim(), 150, "the kill DAG's tasks running on both"
        )
        victims = {t["task_id"]: t for t in running_on_victim()}
        killed = stack.kill_worker(victim)
        killed_at = time.time()
        print(f"SIGKILLed {victim} ({victim_host}): pids {killed}; its running tasks: {sorted(victims)}")
        assert not _alive(killed), f"processes of the killed worker still alive: {_alive(killed)}"
        (marks / "release-kill").write_text("go")  # the tasks on the surviving worker may finish now

        stack.wait_for(
            lambda: _run_state(stack, KILL_DAG, run_id) in ("success", "failed"), 240, "the run to end"
        )
        print(f"kill run ended {time.time() - killed_at:.0f}s after the kill")
        final = _tis(stack, KILL_DAG, run_id)
        history = stack.query(
            "SELECT task_id, try_number, state, hostname FROM task_instance_history "
            "WHERE dag_id = %s AND run_id = %s ORDER BY task_id, try_number",
            (KILL_DAG, run_id),
        )
        print("final:", {t: (d["state"], d["try_number"], d["hostname"]) for t, d in final.items()})
        print("earlier tries:", history)
        assert _run_state(stack, KILL_DAG, run_id) == "success"
        assert {t: d["state"] for t, d in final.items()} == {f"victim_{i}": "success" for i in range(4)}
        for task_id, before in victims.items():
            tries = [(n, str(s), h) for t, n, s, h in history if t == task_id]
            # the try that died with the worker ended failed / up for retry ...
            assert tries and tries[0][0] == before["try_number"], (task_id, tries)
            assert tries[0][1] in ("failed", "up_for_retry"), (task_id, tries)
            assert tries[0][2] == victim_host, (task_id, tries)
            # ... and a later try completed it on the surviving worker
            assert final[task_id]["try_number"] > before["try_number"], (task_id, final[task_id])
            assert final[task_id]["hostname"] == survivor_host, (task_id, final[task_id])
        stuck = stack.query(
            "SELECT dag_id, task_id, state FROM task_instance WHERE state IN ('queued', 'running')"
        )
        assert not stuck, stuck
        assert stack.procs[survivor].poll() is None, (
            f"the surviving worker died:\n{stack.worker_log(survivor)}"
        )
