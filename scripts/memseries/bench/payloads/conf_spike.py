"""Payload for `memseries bench conf-spike`: runs INSIDE one Airflow venv (3.3.2 or 3.3.2+memfix).

One DAG run of ``memseries_mapped_conf`` (examples/dags/mapped_conf.py: one task mapped over --mapped items)
triggered with a ~--conf-kib KiB ``conf``. Two parts, each in a fresh AIRFLOW_HOME and metadata DB (SQLite, or a
fresh PostgreSQL database that is dropped at the end), migrated with the real `airflow db migrate`:

``--part heap``: the scheduler's real code paths, called in this process, each under tracemalloc and a statement
counter (an executemany of k rows counts k): ``_schedule_dag_run`` expanding the mapped task ("expand"), the
next ``_schedule_dag_run`` over the expanded TIs ("schedule"), the critical section
``_executable_task_instances_to_queued`` ("critical section"; the DAG's max_active_tasks is raised to the map
size and max_tis to 10x so that it takes every TI in one query, as a scheduler with enough slots does),
``process_executor_events`` for every TI reported successful ("executor events"), and the ``_schedule_dag_run``
that finishes the run ("finish"). Reported per step: tracemalloc peak (MB) and statements.

``--part scheduler``: a real ``airflow scheduler`` process (its own process group) with a stub executor (module
written next to the payload's temp home, on PYTHONPATH) that marks each queued TI successful in the DB, the way
a worker would, and reports success: so the scheduler does all of its own work (expansion, scheduling, critical
section, executor events, finishing the run) and no worker, api-server or task process competes for the two
cores. The DAG is serialized with `airflow dags reserialize`; once the idle scheduler has run for --settle
seconds the run is triggered with the big conf; the payload waits until the run is finished. Reported: the
scheduler's peak RSS (the kernel's high-water mark VmHWM from /proc/<pid>/status, read before the trigger and
after the run), RSS sampled with psutil every 0.2 s, and the run's final TI states.

Only stdlib + airflow + psutil/psycopg2 (both in every venv here). The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import tracemalloc

from _plumbing import airflow_home

MB = 1024 * 1024
DAG_ID = "memseries_mapped_conf"
BUNDLE = "memseries-conf-spike"
T0 = datetime.datetime(2026, 1, 2, tzinfo=datetime.timezone.utc)

STUB_EXECUTOR = '''
"""memseries conf-spike stub executor: a queued TI is marked successful in the DB (as its worker would) and
reported successful to the scheduler at the next sync. No process is started."""
from __future__ import annotations

from airflow.executors.base_executor import BaseExecutor


class SucceedingExecutor(BaseExecutor):
    supports_multi_team = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._done = []

    def _process_workloads(self, workloads):
        for workload in workloads:
            self.queued_tasks.pop(workload.ti.key, None)
            self.running.add(workload.ti.key)
            self._done.append((workload.ti.id, workload.ti.key))

    def sync(self):
        if not self._done:
            return
        from sqlalchemy import update

        from airflow._shared.timezones import timezone
        from airflow.models.taskinstance import TaskInstance as TI
        from airflow.utils.session import create_session
        from airflow.utils.state import TaskInstanceState

        done, self._done = self._done, []
        now = timezone.utcnow()
        with create_session() as session:
            session.execute(
                update(TI)
                .where(TI.id.in_([ti_id for ti_id, _ in done]))
                .values(state=TaskInstanceState.SUCCESS, start_date=now, end_date=now)
                .execution_options(synchronize_session=False)
            )
        for _, key in done:
            self.success(key)

    def end(self):
        self.sync()

    def terminate(self):
        pass
'''


def _parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=("heap", "scheduler"), required=True)
    p.add_argument("--dag-file", required=True, help="examples/dags/mapped_conf.py")
    p.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite")
    p.add_argument("--pg-url", default=os.environ.get("MEMSERIES_PG_URL", "postgresql://postgres@127.0.0.1:5432"))
    p.add_argument("--mapped", type=int, default=500, help="map size (default 500)")
    p.add_argument("--conf-kib", type=int, default=1024, help="approximate conf size in KiB (default 1024)")
    p.add_argument("--settle", type=float, default=20.0, help="idle scheduler seconds before the trigger")
    p.add_argument("--timeout", type=float, default=900.0, help="max seconds for the run to finish")
    return p.parse_args(argv)


def _log(msg: str) -> None:
    print(f"[conf_spike] {msg}", file=sys.stderr, flush=True)


def big_conf(kib: int) -> dict:
    """~kib KiB of JSON in 1 KiB records (many small strings, like a real payload); 'pick' is what tasks read."""
    return {"pick": "needle", "records": [{"id": i, "text": "x" * 1000} for i in range(kib)]}


def _metadata_db(backend: str, pg_url: str, extra_env: dict | None = None):
    """A fresh AIRFLOW_HOME + migrated metadata DB (`_plumbing.airflow_home`) with the api secrets the stack needs."""
    env = {
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__API_AUTH__JWT_SECRET": "memseries-conf-spike",
        "AIRFLOW__API__SECRET_KEY": "memseries-conf-spike",
        **(extra_env or {}),
    }
    return airflow_home("memseries-conf-spike-", backend, pg_url, env=env)


# ---------------------------------------------------------------------------------------------------- heap part
def _load_dag(dag_file: str, mapped: int):
    import importlib.util

    spec = importlib.util.spec_from_file_location("memseries_mapped_conf_dag", dag_file)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    dag = mod.dag
    assert dag.dag_id == DAG_ID, dag.dag_id
    if mod.MAPPED != mapped:
        raise SystemExit(f"{dag_file} maps over {mod.MAPPED} items, not --mapped {mapped}")
    dag.max_active_tasks = mapped
    return dag


class _Statements:
    def __init__(self, engine):
        self.engine = engine
        self.count = 0
        self.statements: list[str] = []

    def _listener(self, conn, cursor, statement, parameters, context, executemany):
        self.count += len(parameters) if executemany else 1
        self.statements.append(" ".join(statement.split())[:160])

    def __enter__(self):
        from sqlalchemy import event

        event.listen(self.engine, "before_cursor_execute", self._listener)
        return self

    def __exit__(self, *exc):
        from sqlalchemy import event

        event.remove(self.engine, "before_cursor_execute", self._listener)


def _measured(session, name, fn, out):
    gc.collect()
    tracemalloc.start()
    try:
        with _Statements(session.get_bind()) as st:
            result = fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    out.append({"step": name, "peak_mb": round(peak / MB, 2), "statements": st.count, "sql": st.statements})
    _log(f"{name}: peak {peak / MB:.1f} MB, {st.count} statements")
    return result


def heap_part(args) -> dict:
    import time_machine  # in every venv here (test dependency)

    with _metadata_db(args.backend, args.pg_url):
        from airflow.dag_processing.collection import update_dag_parsing_results_in_db
        from airflow.executors.local_executor import LocalExecutor
        from airflow.jobs.job import Job
        from airflow.jobs.scheduler_job_runner import SchedulerJobRunner
        from airflow.models.dagbag import DBDagBag
        from airflow.models.dagbundle import DagBundleModel
        from airflow.models.dagrun import DagRun
        from airflow.models.pool import Pool
        from airflow.models.taskinstance import TaskInstance as TI
        from airflow.serialization.serialized_objects import LazyDeserializedDAG
        from airflow.settings import Session
        from airflow.utils.state import DagRunState, TaskInstanceState
        from airflow.utils.types import DagRunTriggeredByType, DagRunType
        from sqlalchemy import func, select, update

        session = Session()
        conf = big_conf(args.conf_kib)
        conf_bytes = len(json.dumps(conf))
        with time_machine.travel(T0, tick=False):
            session.add(DagBundleModel(name=BUNDLE))
            session.execute(update(Pool).where(Pool.pool == Pool.DEFAULT_POOL_NAME).values(slots=10 * args.mapped))
            session.commit()
            errors: dict = {}
            update_dag_parsing_results_in_db(
                BUNDLE, None, [LazyDeserializedDAG.from_dag(_load_dag(args.dag_file, args.mapped))], errors, None,
                set(), session=session,
            )
            if errors:
                raise RuntimeError(errors)
            sdag = DBDagBag().get_latest_version_of_dag(DAG_ID, session=session)
            sdag.create_dagrun(
                run_id="manual__conf_spike", logical_date=T0, data_interval=(T0, T0), run_after=T0,
                run_type=DagRunType.MANUAL, triggered_by=DagRunTriggeredByType.TEST, state=DagRunState.RUNNING,
                conf=conf, session=session,
            )
            session.commit()
            session.expunge_all()
        job = Job()
        session.add(job)
        session.commit()
        executor = LocalExecutor(parallelism=10 * args.mapped)  # never started
        runner = SchedulerJobRunner(job=job, executors=[executor])
        steps: list[dict] = []

        def schedule():
            (dr,) = DagRun.get_running_dag_runs_to_examine(session=session)
            return runner._schedule_dag_run(dr, session)

        with time_machine.travel(T0 + datetime.timedelta(minutes=1), tick=False):
            for name in ("expand", "schedule"):
                _measured(session, name, schedule, steps)
                session.commit()
                session.expunge_all()
            queued = _measured(
                session, "critical section",
                lambda: runner._executable_task_instances_to_queued(max_tis=10 * args.mapped, session=session), steps,
            )
            n_queued = len(queued)
            session.commit()
            session.expunge_all()
            for ti in session.scalars(select(TI).where(TI.dag_id == DAG_ID)):
                executor.event_buffer[ti.key] = (TaskInstanceState.SUCCESS, None)
            session.expunge_all()
            session.execute(update(TI).where(TI.dag_id == DAG_ID).values(state=TaskInstanceState.SUCCESS))
            session.commit()
            _measured(session, "executor events", lambda: runner._process_executor_events(executor, session), steps)
            session.commit()
            session.expunge_all()
            _measured(session, "finish", schedule, steps)
            session.commit()
        state = session.scalar(select(DagRun.state).where(DagRun.dag_id == DAG_ID))
        n_tis = session.scalar(select(func.count()).select_from(TI).where(TI.dag_id == DAG_ID))
        session.close()
        return {
            "part": "heap", "steps": steps, "conf_bytes": conf_bytes, "tis": n_tis, "queued": n_queued,
            "run_state": str(state),
        }


# ----------------------------------------------------------------------------------------------- scheduler part
def _vm_hwm_mb(pid: int) -> float:
    """The kernel's peak-RSS high-water mark of pid (VmHWM in /proc/<pid>/status), MB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for {pid}")


def _run_state() -> tuple[str | None, dict]:
    from sqlalchemy import create_engine, text

    eng = create_engine(os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    try:
        with eng.connect() as conn:
            state = conn.execute(text("SELECT state FROM dag_run WHERE dag_id = :d"), {"d": DAG_ID}).scalar()
            counts = dict(
                conn.execute(
                    text("SELECT coalesce(state, 'none'), count(*) FROM task_instance WHERE dag_id = :d GROUP BY 1"),
                    {"d": DAG_ID},
                ).all()
            )
    finally:
        eng.dispose()
    return state, counts


def scheduler_part(args) -> dict:
    import psutil

    stub_dir = tempfile.mkdtemp(prefix="memseries-conf-spike-stub-")
    with open(os.path.join(stub_dir, "memseries_conf_spike_executor.py"), "w") as f:
        f.write(textwrap.dedent(STUB_EXECUTOR))
    env_extra = {
        "AIRFLOW__CORE__EXECUTOR": "memseries_conf_spike_executor.SucceedingExecutor",
        "PYTHONPATH": os.pathsep.join(p for p in (stub_dir, os.environ.get("PYTHONPATH", "")) if p),
        "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.5",
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
    }
    try:
        with _metadata_db(args.backend, args.pg_url, env_extra) as home:
            shutil.copy(args.dag_file, os.path.join(home, "dags", "mapped_conf.py"))
            proc = subprocess.run(
                [sys.executable, "-m", "airflow", "dags", "reserialize"], capture_output=True, text=True, env=os.environ
            )
            if proc.returncode != 0:
                raise RuntimeError(f"airflow dags reserialize failed:\n{proc.stderr[-3000:]}")
            log = open(os.path.join(home, "scheduler.log"), "w")
            sched = subprocess.Popen(
                [sys.executable, "-m", "airflow", "scheduler"], stdout=log, stderr=subprocess.STDOUT,
                env=os.environ, start_new_session=True,
            )
            samples: list[tuple[float, float]] = []
            t_start = time.monotonic()
            try:
                ps = psutil.Process(sched.pid)

                def sample():
                    samples.append((round(time.monotonic() - t_start, 2), ps.memory_info().rss / MB))

                while time.monotonic() - t_start < args.settle:
                    if sched.poll() is not None:
                        raise RuntimeError(f"scheduler exited ({sched.returncode}); see {home}/scheduler.log")
                    sample()
                    time.sleep(0.2)
                hwm_before = _vm_hwm_mb(sched.pid)
                rss_before = ps.memory_info().rss / MB
                t_trigger = time.monotonic() - t_start
                conf = big_conf(args.conf_kib)
                trig = subprocess.run(
                    [sys.executable, "-c", textwrap.dedent(f"""
                        import json, sys
                        from airflow.api.common.trigger_dag import trigger_dag
                        from airflow.utils.types import DagRunTriggeredByType
                        trigger_dag({DAG_ID!r}, triggered_by=DagRunTriggeredByType.TEST, conf=json.load(sys.stdin))
                    """)],
                    input=json.dumps(conf), capture_output=True, text=True, env=os.environ,
                )
                if trig.returncode != 0:
                    raise RuntimeError(f"trigger failed:\n{trig.stderr[-3000:]}")
                _log(f"triggered at {t_trigger:.1f} s (scheduler RSS {rss_before:.0f} MB)")
                state, counts = None, {}
                deadline = time.monotonic() + args.timeout
                last_poll = 0.0
                while time.monotonic() < deadline:
                    if sched.poll() is not None:
                        raise RuntimeError(f"scheduler exited ({sched.returncode}); see scheduler.log")
                    sample()
                    if time.monotonic() - last_poll > 1.0:
                        last_poll = time.monotonic()
                        state, counts = _run_state()
                        if state in ("success", "failed"):
                            break
                    time.sleep(0.2)
                t_done = time.monotonic() - t_start
                hwm_after = _vm_hwm_mb(sched.pid)
                _log(f"run {state} at {t_done:.1f} s, TIs {counts}, scheduler VmHWM {hwm_before:.0f} -> {hwm_after:.0f} MB")
            finally:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(sched.pid, signal.SIGTERM)
                try:
                    sched.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(sched.pid, signal.SIGKILL)
                    sched.wait()
                log.close()
    finally:
        shutil.rmtree(stub_dir, ignore_errors=True)
    return {
        "part": "scheduler",
        "run_state": state,
        "ti_states": counts,
        "peak_rss_before_trigger_mb": round(hwm_before, 1),
        "peak_rss_mb": round(hwm_after, 1),
        "rss_before_trigger_mb": round(rss_before, 1),
        "trigger_s": round(t_trigger, 1),
        "done_s": round(t_done, 1),
        "rss_samples": [(t, round(r, 1)) for t, r in samples],
    }


def main(argv=None) -> int:
    args = _parse_args(argv)
    out = heap_part(args) if args.part == "heap" else scheduler_part(args)
    out.update({"backend": args.backend, "mapped": args.mapped, "conf_kib": args.conf_kib})
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
