"""Payload for `memseries bench scheduler-examine`: runs INSIDE one Airflow venv (3.1.3, 3.1.3+memfix, 3.3.2).

Measures what one scheduler loop spends on "which running runs do I look at" and "did their DAG change":
``DagRun.get_running_dag_runs_to_examine`` followed by ``SchedulerJobRunner._verify_integrity_if_dag_changed``
for every examined run, for R running runs x N tasks, in two scenarios:

- ``unchanged``: the runs' TIs are on the DAG's latest version (the common case, every loop);
- ``changed``: a new DAG version (one task added) was written after the runs were created, so every run
  needs its unfinished TIs repointed and the new task's TI created (happens once per run per new version).

Each run's TIs are in a fixed mix of states (see STATE_MIX): 40 % success, 10 % each running/queued/scheduled,
30 % no state yet.

Per size and scenario it reports: TaskInstances materialised from the DB (SQLAlchemy ``load`` events),
TaskInstances still held by the session at the end, statements executed (an executemany of k rows counts
k), tracemalloc current (what is still allocated at the end, with the examined runs still referenced, as
in the scheduler loop) and peak, and wall time (median of --repeat untraced runs; tracemalloc slows
Python down, so memory is measured in a separate traced run). Every measured operation runs in its own
transaction that is rolled back, so the DB state is the same for each repetition.

The payload makes its own AIRFLOW_HOME and metadata DB (SQLite file, or a fresh PostgreSQL database that is
dropped at the end) and migrates it with the real `airflow db migrate`. Only stdlib + airflow (+ psycopg2,
which every Airflow venv here has) are used. The last line of stdout is one JSON object.

Works with the Airflow 3.1.3 and 3.3.2 APIs (same signatures for everything used here).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import statistics
import sys
import time
import tracemalloc

from _plumbing import airflow_home

BUNDLE = "memseries-bench"
DAG_PREFIX = "bench_examine"
MB = 1024 * 1024


def _parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite")
    p.add_argument(
        "--pg-url", default=os.environ.get("MEMSERIES_PG_URL", "postgresql://postgres@127.0.0.1:5432")
    )
    p.add_argument("--sizes", default="50,100,500", help="comma-separated tasks per DAG (default 50,100,500)")
    p.add_argument("--runs", type=int, default=20, help="running DAG runs (default 20)")
    p.add_argument("--repeat", type=int, default=3, help="untraced timing repetitions (median; default 3)")
    p.add_argument(
        "--scenarios", default="unchanged,changed", help="comma-separated: unchanged, changed (default both)"
    )
    return p.parse_args(argv)


def _log(msg: str) -> None:
    print(f"[scheduler_examine] {msg}", file=sys.stderr, flush=True)


def _metadata_db(backend: str, pg_url: str):
    """A fresh AIRFLOW_HOME + migrated metadata DB; environment set before airflow is imported."""
    # the bench writes a second DAG version right after the first
    return airflow_home("memseries-bench-examine-", backend, pg_url,
                        env={"AIRFLOW__CORE__MIN_SERIALIZED_DAG_UPDATE_INTERVAL": "0"})


def _write_dag(session, dag_id: str, task_ids: list[str]) -> None:
    """Serialize a real DAG into the metadata DB the way the dag-processor does (both 3.1.3 and 3.3.2)."""
    from airflow.dag_processing.collection import update_dag_parsing_results_in_db
    from airflow.models.dag import DagModel
    from airflow.models.dagbundle import DagBundleModel
    from airflow.providers.standard.operators.empty import EmptyOperator
    from airflow.sdk import DAG
    from airflow.serialization.serialized_objects import LazyDeserializedDAG
    from sqlalchemy import update

    if session.get(DagBundleModel, BUNDLE) is None:
        session.add(DagBundleModel(name=BUNDLE))
        session.flush()
    start = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)
    with DAG(dag_id, schedule=None, start_date=start) as dag:
        for task_id in task_ids:
            EmptyOperator(task_id=task_id)
    errors: dict = {}
    update_dag_parsing_results_in_db(
        BUNDLE, None, [LazyDeserializedDAG.from_dag(dag)], errors, None, set(), session=session
    )
    if errors:
        raise RuntimeError(f"DAG {dag_id} failed to serialize: {errors}")
    session.execute(update(DagModel).where(DagModel.dag_id == dag_id).values(is_paused=False))
    session.commit()


# A running run's TIs in a realistic mix, by task index modulo 10:
# 40 % done, 30 % in flight, 30 % no state yet
STATE_MIX = {
    0: "success",
    1: "success",
    2: "success",
    3: "success",
    4: "running",
    5: "queued",
    6: "scheduled",
}


def _mix_states(session, dag_id: str, n_tasks: int) -> None:
    from airflow.models.taskinstance import TaskInstance
    from sqlalchemy import update

    by_state: dict[str, list[str]] = {}
    for i in range(n_tasks):
        if (state := STATE_MIX.get(i % 10)) is not None:
            by_state.setdefault(state, []).append(f"task_{i}")
    for state, task_ids in by_state.items():
        session.execute(
            update(TaskInstance)
            .where(TaskInstance.dag_id == dag_id, TaskInstance.task_id.in_(task_ids))
            .values(state=state)
        )
    session.commit()


def _create_runs(session, dag_id: str, runs: int) -> None:
    from airflow.models.dagbag import DBDagBag
    from airflow.utils.state import DagRunState
    from airflow.utils.types import DagRunTriggeredByType, DagRunType

    sdag = DBDagBag().get_latest_version_of_dag(dag_id, session=session)
    now = datetime.datetime.now(datetime.timezone.utc)
    for i in range(runs):
        logical_date = now - datetime.timedelta(days=i + 1)
        sdag.create_dagrun(
            run_id=f"manual__{dag_id}_{i}",
            logical_date=logical_date,
            data_interval=(logical_date, logical_date),
            run_after=logical_date,
            run_type=DagRunType.MANUAL,
            triggered_by=DagRunTriggeredByType.TEST,
            state=DagRunState.RUNNING,
            session=session,
        )
    session.commit()
    session.expunge_all()


class _Counters:
    """TaskInstances materialised from rows, and statements the DB executes (executemany of k rows = k)."""

    def __init__(self, engine):
        from airflow.models.taskinstance import TaskInstance
        from sqlalchemy import event

        self.engine = engine
        self.ti_loads = 0
        self.statements = 0
        self._event = event
        self._ti = TaskInstance

    def _on_load(self, target, context):
        self.ti_loads += 1

    def _on_execute(self, conn, cursor, statement, parameters, context, executemany):
        self.statements += len(parameters) if executemany else 1

    def __enter__(self):
        self._event.listen(self._ti, "load", self._on_load)
        self._event.listen(self.engine, "before_cursor_execute", self._on_execute)
        return self

    def __exit__(self, *exc):
        self._event.remove(self._ti, "load", self._on_load)
        self._event.remove(self.engine, "before_cursor_execute", self._on_execute)


def _examine_and_verify(runner, session):
    """What the scheduler loop does for these runs, up to (not including) update_state."""
    from airflow.models.dagrun import DagRun

    dag_runs = list(DagRun.get_running_dag_runs_to_examine(session=session))
    for dag_run in dag_runs:
        if not dag_run.bundle_version:
            runner._verify_integrity_if_dag_changed(dag_run=dag_run, session=session)
    session.flush()
    return dag_runs


def _measure(runner, expected_runs: int, repeat: int) -> dict:
    from airflow import settings
    from airflow.models.taskinstance import TaskInstance

    def one(traced: bool):
        session = settings.Session()
        try:
            gc.collect()
            if traced:
                tracemalloc.start()
            with _Counters(session.get_bind()) as counters:
                t0 = time.perf_counter()
                dag_runs = _examine_and_verify(runner, session)
                wall = time.perf_counter() - t0
            result = {"wall_s": wall, "ti_loads": counters.ti_loads, "statements": counters.statements}
            if traced:
                # measured while the examined runs (and whatever they hold) are still referenced
                current, peak = tracemalloc.get_traced_memory()
                tracemalloc.stop()
                result.update(current_mb=current / MB, peak_mb=peak / MB)
            result["tis_held"] = sum(1 for o in session.identity_map.values() if isinstance(o, TaskInstance))
            result["runs"] = len(dag_runs)
            del dag_runs
            return result
        finally:
            if tracemalloc.is_tracing():
                tracemalloc.stop()
            session.rollback()
            session.close()

    one(traced=False)  # warm-up: caches (DAG bag, compiled statements) as in a running scheduler
    timed = [one(traced=False) for _ in range(max(1, repeat))]
    traced = one(traced=True)
    if any(t["runs"] != expected_runs for t in timed + [traced]):
        raise RuntimeError(f"examine returned {traced['runs']} runs, expected {expected_runs}")
    return {
        "wall_s": statistics.median(t["wall_s"] for t in timed),
        "ti_loads": traced["ti_loads"],
        "tis_held": traced["tis_held"],
        "statements": traced["statements"],
        "current_mb": round(traced["current_mb"], 4),
        "peak_mb": round(traced["peak_mb"], 4),
    }


def main(argv=None) -> int:
    args = _parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    for s in scenarios:
        if s not in ("unchanged", "changed"):
            raise SystemExit(f"unknown scenario {s!r}")
    results = []
    with _metadata_db(args.backend, args.pg_url):
        import airflow
        from airflow import settings
        from airflow.jobs.job import Job
        from airflow.jobs.scheduler_job_runner import SchedulerJobRunner
        from airflow.models.dag import DagModel
        from sqlalchemy import update

        # executors are only instantiated (3.3.2 / patched builds do it in the constructor), never started
        runner = SchedulerJobRunner(job=Job())
        version = airflow.__version__
        for n_tasks in sizes:
            dag_id = f"{DAG_PREFIX}_{n_tasks}"
            session = settings.Session()
            try:
                t0 = time.perf_counter()
                task_ids = [f"task_{i}" for i in range(n_tasks)]
                _write_dag(session, dag_id, task_ids)
                _create_runs(session, dag_id, args.runs)
                _mix_states(session, dag_id, n_tasks)
                # only this size's DAG is examined
                session.execute(update(DagModel).where(DagModel.dag_id != dag_id).values(is_paused=True))
                session.commit()
                _log(
                    f"{version} {args.backend}: {args.runs} runs x {n_tasks} tasks set up in "
                    f"{time.perf_counter() - t0:.1f}s"
                )
                for scenario in ("unchanged", "changed"):
                    if scenario == "changed":
                        _write_dag(session, dag_id, task_ids + ["task_added"])
                    if scenario not in scenarios:
                        continue
                    m = _measure(runner, args.runs, args.repeat)
                    m.update(tasks=n_tasks, runs=args.runs, tis=n_tasks * args.runs, scenario=scenario)
                    _log(f"{version} {args.backend} {scenario} {n_tasks}: {m}")
                    results.append(m)
                session.execute(update(DagModel).where(DagModel.dag_id == dag_id).values(is_paused=True))
                session.commit()
            finally:
                session.close()
    print(json.dumps({"airflow_version": version, "backend": args.backend, "results": results}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
