"""Payload for `memseries bench scheduler-scale`: runs INSIDE one Airflow 3.3.2 venv (unpatched or patched).

One fresh metadata DB per invocation (SQLite file or a new PostgreSQL database, dropped at the end), migrated
with the real `airflow db migrate`. Rows are generated with bulk INSERTs. For each scenario and size it measures
the real scheduler method, once untraced (wall time) and once under tracemalloc (peak and current heap), each in
a transaction that is rolled back, so both see the same DB state:

- ``asset_create``: ``SchedulerJobRunner._create_dag_runs_asset_triggered`` for a DAG whose run consumes N events
  (issue #16 (a));
- ``executor_success``: ``SchedulerJobRunner.process_executor_events`` with one SUCCESS event of a run that
  consumed N events ((b)); ``executor_failure``: the same with a FAILED event of a task with a failure callback
  and e-mail, whose requests must carry the same events on both builds (a digest of them is reported);
- ``decisions``: ``DagRun.task_instance_scheduling_decisions`` on a run with N mapped TIs, 99 % finished ((c));
- ``create_runs``: ``SchedulerJobRunner._create_dag_runs`` for D due DAGs (5 tasks each) ((d)), with the
  objects left in the session afterwards.

``--real-scheduler`` then starts a real ``airflow scheduler`` process on the largest case (the asset-triggered
DAG with the most events queued, the largest mapped run examined) and reports its peak RSS (VmHWM) and psutil's
largest sampled RSS until it has created the asset-triggered run and made a few more loops.

The last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import tracemalloc

from _plumbing import airflow_home

BUNDLE = "memseries-bench"
MB = 1024 * 1024
UTC = datetime.UTC
T0 = datetime.datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
JOB_ID = 4242
CLOSED_POOL = "memseries_closed"  # 0 slots: the real scheduler never queues the bench's tasks


def _parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite")
    p.add_argument(
        "--pg-url", default=os.environ.get("MEMSERIES_PG_URL", "postgresql://postgres@127.0.0.1:5432")
    )
    p.add_argument("--events", default="1000,10000,50000", help="asset-triggered run creation: events")
    p.add_argument("--consumed", default="10000,50000", help="executor events: events the run consumed")
    p.add_argument("--mapped", default="1000,10000", help="scheduling decisions: mapped TIs (99%% finished)")
    p.add_argument("--dags", default="100,1000", help="_create_dag_runs: due DAGs")
    p.add_argument("--real-scheduler", action="store_true", help="also run a real `airflow scheduler`")
    p.add_argument("--scheduler-timeout", type=float, default=240.0)
    return p.parse_args(argv)


def _ints(s: str) -> list[int]:
    return sorted({int(x) for x in s.split(",") if x.strip() and int(x) > 0})


def _log(msg: str) -> None:
    print(f"[scheduler_scale] {msg}", file=sys.stderr, flush=True)


def _metadata_db(backend: str, pg_url: str):
    """A fresh AIRFLOW_HOME + migrated metadata DB (`_plumbing.airflow_home`), set up for these scenarios."""
    env = {
        "AIRFLOW__CORE__PARALLELISM": "2",
        "AIRFLOW__CORE__MIN_SERIALIZED_DAG_UPDATE_INTERVAL": "0",
    }
    return airflow_home("memseries-bench-scale-", backend, pg_url, env=env)


# --- DAGs -------------------------------------------------------------------------------------------------


def _noop(*args):
    return None


def _on_failure(context):
    return None


def _write_dags(session, dags) -> None:
    from airflow.dag_processing.collection import update_dag_parsing_results_in_db
    from airflow.models.asset import DagScheduleAssetReference
    from airflow.models.dag import DagModel
    from airflow.models.dagbundle import DagBundleModel
    from airflow.serialization.serialized_objects import LazyDeserializedDAG
    from sqlalchemy import update

    if session.get(DagBundleModel, BUNDLE) is None:
        session.add(DagBundleModel(name=BUNDLE))
        session.flush()
    errors: dict = {}
    update_dag_parsing_results_in_db(
        BUNDLE, None, [LazyDeserializedDAG.from_dag(d) for d in dags], errors, None, set(), session=session
    )
    if errors:
        raise RuntimeError(f"DAGs failed to serialize: {list(errors.items())[:3]}")
    ids = [d.dag_id for d in dags]
    session.execute(
        update(DagModel).where(DagModel.dag_id.in_(ids)).values(is_paused=False, relative_fileloc="bench.py")
    )
    # the asset-triggered window of a first run (catchup off) starts when the DAG began scheduling on its
    # assets: put that before the bench's events
    session.execute(
        update(DagScheduleAssetReference)
        .where(DagScheduleAssetReference.dag_id.in_(ids))
        .values(created_at=T0 - datetime.timedelta(days=400))
    )
    session.commit()


def _asset_dag(dag_id: str, uri: str, *, callbacks: bool = False):
    import warnings

    from airflow.providers.standard.operators.empty import EmptyOperator
    from airflow.sdk import DAG, Asset

    with DAG(dag_id, schedule=[Asset(uri)], start_date=T0 - datetime.timedelta(days=400)) as dag:
        EmptyOperator(task_id="plain", pool=CLOSED_POOL)
        if callbacks:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                EmptyOperator(
                    task_id="watched",
                    pool=CLOSED_POOL,
                    on_failure_callback=_on_failure,
                    email="ops@example.com",
                    email_on_failure=True,
                    retries=0,
                )
    return dag


def _mapped_dag(dag_id: str, n: int):
    from airflow.providers.standard.operators.empty import EmptyOperator
    from airflow.providers.standard.operators.python import PythonOperator
    from airflow.sdk import DAG

    with DAG(dag_id, schedule=None, start_date=T0 - datetime.timedelta(days=400)) as dag:
        mapped = PythonOperator.partial(task_id="mapped", python_callable=_noop, pool=CLOSED_POOL).expand(
            op_args=[[i] for i in range(n)]
        )
        mapped >> EmptyOperator(task_id="after", pool=CLOSED_POOL)
    return dag


def _daily_dag(dag_id: str):
    from airflow.providers.standard.operators.empty import EmptyOperator
    from airflow.sdk import DAG

    with DAG(dag_id, schedule="@daily", start_date=T0 - datetime.timedelta(days=3), catchup=False) as dag:
        prev = None
        for i in range(5):
            t = EmptyOperator(task_id=f"t{i}", pool=CLOSED_POOL)
            if prev is not None:
                prev >> t
            prev = t
    return dag


# --- rows ---------------------------------------------------------------------------------------------------


def _asset_id(session, name: str) -> int:
    from airflow.models.asset import AssetModel
    from sqlalchemy import select

    return session.scalar(select(AssetModel.id).where(AssetModel.name == name))


def _bulk_events(session, asset_id: int, n: int, start: datetime.datetime) -> None:
    """n events, 1 s apart from ``start``, extra of ~200 bytes each, in INSERT batches of 5,000 rows."""
    from airflow.models.asset import AssetEvent
    from sqlalchemy import insert

    for lo in range(0, n, 5000):
        rows = [
            {
                "asset_id": asset_id,
                "extra": {"i": i, "payload": "x" * 180},
                "timestamp": start + datetime.timedelta(seconds=i),
                "source_dag_id": "producer",
                "source_task_id": "emit",
                "source_run_id": f"run_{i}",
                "source_map_index": -1,
            }
            for i in range(lo, min(n, lo + 5000))
        ]
        session.execute(insert(AssetEvent.__table__), rows)
    session.commit()


def _queue(session, asset_id: int, dag_id: str, created_at) -> None:
    from airflow.models.asset import AssetDagRunQueue

    session.add(AssetDagRunQueue(asset_id=asset_id, target_dag_id=dag_id, created_at=created_at))
    session.commit()


def _create_run(session, dag_id: str, run_type, run_id: str, state, **kw):
    from airflow.models.dagbag import DBDagBag
    from airflow.utils.types import DagRunTriggeredByType

    sdag = DBDagBag().get_latest_version_of_dag(dag_id, session=session)
    dr = sdag.create_dagrun(
        run_id=run_id,
        run_type=run_type,
        triggered_by=DagRunTriggeredByType.TEST,
        state=state,
        session=session,
        **kw,
    )
    session.commit()
    return dr.id


class _Loads:
    """ORM objects materialised from rows, per class, while active."""

    def __init__(self, *classes):
        from sqlalchemy import event

        self._event = event
        self.classes = classes
        self.counts = {c.__name__: 0 for c in classes}
        self._handlers = {}

    def __enter__(self):
        for c in self.classes:
            name = c.__name__

            def _on_load(target, context, name=name):
                self.counts[name] += 1

            self._handlers[c] = _on_load
            self._event.listen(c, "load", _on_load)
        return self

    def __exit__(self, *exc):
        for c, h in self._handlers.items():
            self._event.remove(c, "load", h)


def _measure(fn, loads_of=(), setup=None) -> dict:
    """fn(session) untraced (wall; median of up to 3 short runs) then under tracemalloc, each rolled back."""
    from airflow import settings

    out: dict = {}
    walls: list[float] = []
    # untraced first (repeated up to 3 times while a run is under 1 s: the median, to tame noise on a
    # shared machine), then one traced run
    plan = [False, True]
    while plan:
        traced = plan.pop(0)
        if setup is not None:
            setup()
        session = settings.Session()
        try:
            gc.collect()
            if traced:
                tracemalloc.start()
            with _Loads(*loads_of) as loads:
                t0 = time.perf_counter()
                extra = fn(session) or {}
                wall = time.perf_counter() - t0
            if traced:
                current, peak = tracemalloc.get_traced_memory()
                tracemalloc.stop()
                out.update(peak_mb=round(peak / MB, 3), current_mb=round(current / MB, 3), loads=loads.counts)
                out.update(extra)
            else:
                walls.append(wall)
                if wall < 1.0 and len(walls) < 3:
                    plan.insert(0, False)
                out["wall_s"] = round(sorted(walls)[len(walls) // 2], 4)
        finally:
            if tracemalloc.is_tracing():
                tracemalloc.stop()
            session.rollback()
            session.close()
    return out


# --- scenarios ----------------------------------------------------------------------------------------------


def scenario_asset_create(runner, events: list[int]) -> list[dict]:
    from airflow import settings
    from airflow.models.asset import AssetEvent, association_table
    from airflow.models.dag import DagModel
    from sqlalchemy import func, select

    results = []
    session = settings.Session()
    dags = [_asset_dag(f"asset_consumer_{n}", f"memseries://bench/{n}") for n in events]
    _write_dags(session, dags)
    for n in events:
        t0 = time.perf_counter()
        asset_id = _asset_id(session, f"memseries://bench/{n}")
        _bulk_events(session, asset_id, n, T0 - datetime.timedelta(seconds=n + 10))
        _queue(session, asset_id, f"asset_consumer_{n}", T0)
        _log(f"asset_create {n}: {n} events set up in {time.perf_counter() - t0:.1f}s")

        def create(session, n=n):
            dm = session.get(DagModel, f"asset_consumer_{n}")
            runner._create_dag_runs_asset_triggered(dag_models=[dm], session=session)
            session.flush()
            linked = session.scalar(select(func.count()).select_from(association_table))
            held = sum(1 for o in session.identity_map.values() if isinstance(o, AssetEvent))
            return {"linked": linked, "events_held": held}

        m = _measure(create, loads_of=(AssetEvent,))
        m.update(scenario="asset_create", size=n)
        _log(str(m))
        results.append(m)
    session.close()
    return results


def _event_digest(requests) -> str:
    """A digest of the consumed events every request carries (same on both builds if identical)."""
    h = hashlib.sha256()
    for r in requests:
        events = r.context_from_server.dag_run.consumed_asset_events
        h.update(type(r).__name__.encode())
        for e in sorted(events, key=lambda e: (e.timestamp, e.source_run_id)):
            h.update(
                json.dumps(
                    [
                        e.asset.uri,
                        e.extra,
                        e.source_run_id,
                        str(e.timestamp),
                        sorted(a.name for a in e.source_aliases),
                    ],
                    sort_keys=True,
                ).encode()
            )
    return h.hexdigest()[:16]


def scenario_executor(consumed: list[int]) -> list[dict]:
    from unittest import mock

    from airflow import settings
    from airflow.jobs.scheduler_job_runner import SchedulerJobRunner
    from airflow.models.asset import AssetEvent, association_table
    from airflow.models.dagbag import DBDagBag
    from airflow.models.taskinstance import TaskInstance as TI
    from airflow.models.taskinstancekey import TaskInstanceKey
    from airflow.utils.state import DagRunState, TaskInstanceState
    from airflow.utils.types import DagRunType
    from sqlalchemy import Integer, insert, literal, select, update

    results = []
    session = settings.Session()
    biggest = max(consumed)
    _write_dags(
        session, [_asset_dag(f"consumed_{n}", f"memseries://consumed/{n}", callbacks=True) for n in consumed]
    )
    pool_asset = _asset_id(session, f"memseries://consumed/{biggest}")
    _bulk_events(session, pool_asset, biggest, T0 - datetime.timedelta(days=2))
    for n in consumed:
        dag_id = f"consumed_{n}"
        run_id = f"asset_triggered__{n}"
        dr_id = _create_run(
            session,
            dag_id,
            DagRunType.ASSET_TRIGGERED,
            run_id,
            DagRunState.RUNNING,
            logical_date=None,
            data_interval=None,
            run_after=T0,
        )
        # link the first n events of the pool to this run, in SQL
        first_n = (
            select(AssetEvent.id)
            .where(AssetEvent.asset_id == pool_asset)
            .order_by(AssetEvent.id)
            .limit(n)
            .subquery()
        )
        session.execute(
            insert(association_table).from_select(
                ["dag_run_id", "event_id"], select(literal(dr_id, type_=Integer), first_n.c.id)
            )
        )
        session.execute(
            update(TI)
            .where(TI.dag_id == dag_id)
            .values(state=TaskInstanceState.RUNNING, try_number=1, queued_by_job_id=JOB_ID, start_date=T0)
        )
        session.execute(
            update(TI)
            .where(TI.dag_id == dag_id, TI.task_id == "plain")
            .values(state=TaskInstanceState.SUCCESS)
        )
        session.commit()
        real_bag = DBDagBag()

        for scenario, task_id, state in (
            ("executor_success", "plain", TaskInstanceState.SUCCESS),
            ("executor_failure", "watched", TaskInstanceState.FAILED),
        ):

            def process(
                session, task_id=task_id, state=state, dag_id=dag_id, run_id=run_id, real_bag=real_bag
            ):
                key = TaskInstanceKey(dag_id, task_id, run_id, 1, -1)
                executor = mock.MagicMock(name="executor")
                executor.get_event_buffer.return_value = {key: (state, None)}
                executor.has_task.return_value = False
                bag = mock.MagicMock()
                bag.get_dag_for_run.side_effect = lambda dag_run, session, real_bag=real_bag: (
                    real_bag.get_dag_for_run(dag_run=dag_run, session=session)
                )
                SchedulerJobRunner.process_executor_events(
                    executor=executor, job_id=JOB_ID, scheduler_dag_bag=bag, session=session
                )
                session.flush()
                requests = [c.args[0] for c in executor.send_callback.call_args_list]
                return {
                    "requests": [type(r).__name__ for r in requests],
                    "events_in_requests": [
                        len(r.context_from_server.dag_run.consumed_asset_events) for r in requests
                    ],
                    "digest": _event_digest(requests) if requests else None,
                }

            def reset(dag_id=dag_id, task_id=task_id):
                # the failure path commits (handle_failure): put the TI back before each measurement
                s = settings.Session()
                s.execute(
                    update(TI)
                    .where(TI.dag_id == dag_id, TI.task_id == task_id)
                    .values(
                        state=TaskInstanceState.SUCCESS if task_id == "plain" else TaskInstanceState.RUNNING,
                        try_number=1,
                        max_tries=0,
                        end_date=None,
                    )
                )
                s.commit()
                s.close()

            m = _measure(process, loads_of=(AssetEvent, TI), setup=reset)
            m.update(scenario=scenario, size=n)
            _log(str(m))
            results.append(m)
    session.close()
    return results


def scenario_decisions(mapped: list[int]) -> list[dict]:
    from airflow import settings
    from airflow.models.dagbag import DBDagBag
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance as TI
    from airflow.utils.state import DagRunState
    from airflow.utils.types import DagRunType
    from sqlalchemy import select, update

    results = []
    session = settings.Session()
    for n in mapped:
        t0 = time.perf_counter()
        dag_id = f"mapped_{n}"
        _write_dags(session, [_mapped_dag(dag_id, n)])
        _create_run(
            session,
            dag_id,
            DagRunType.MANUAL,
            f"manual__{n}",
            DagRunState.RUNNING,
            logical_date=T0,
            data_interval=(T0, T0),
            run_after=T0,
        )
        finished = n * 99 // 100
        session.execute(
            update(TI)
            .where(TI.dag_id == dag_id, TI.task_id == "mapped", TI.map_index < finished)
            .values(state="success", start_date=T0, end_date=T0 + datetime.timedelta(seconds=1))
        )
        session.execute(
            update(TI)
            .where(TI.dag_id == dag_id, TI.task_id == "mapped", TI.map_index >= finished)
            .values(state="running", start_date=T0)
        )
        session.commit()
        _log(f"decisions {n}: run with {n} mapped TIs set up in {time.perf_counter() - t0:.1f}s")
        bag = DBDagBag()

        def decide(session, dag_id=dag_id, bag=bag):
            dr = session.scalar(select(DagRun).where(DagRun.dag_id == dag_id))
            dr.dag = bag.get_dag_for_run(dag_run=dr, session=session)
            info = dr.task_instance_scheduling_decisions(session=session)
            held = sum(1 for o in session.identity_map.values() if isinstance(o, TI))
            return {
                "finished": len(info.finished_tis),
                "unfinished": len(info.unfinished_tis),
                "schedulable": sorted(f"{t.task_id}[{t.map_index}]" for t in info.schedulable_tis),
                "tis_held": held,
            }

        decide(settings.Session())  # warm the DAG bag, as a running scheduler has it
        m = _measure(decide, loads_of=(TI,))
        m.update(scenario="decisions", size=n)
        _log(str(m))
        results.append(m)
    session.close()
    return results


def scenario_create_runs(runner, counts: list[int]) -> list[dict]:
    from airflow import settings
    from airflow.models.dag import DagModel
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance as TI
    from sqlalchemy import func, select

    results = []
    session = settings.Session()
    biggest = max(counts)
    t0 = time.perf_counter()
    for lo in range(0, biggest, 200):
        _write_dags(session, [_daily_dag(f"daily_{i:05d}") for i in range(lo, min(biggest, lo + 200))])
    _log(f"create_runs: {biggest} DAGs written in {time.perf_counter() - t0:.1f}s")
    for d in counts:

        def create(session, d=d):
            dag_models = list(
                session.scalars(
                    select(DagModel).where(DagModel.dag_id.like("daily_%")).order_by(DagModel.dag_id).limit(d)
                )
            )
            runner._create_dag_runs(dag_models, session)
            session.flush()
            held = {
                "runs_held": sum(1 for o in session.identity_map.values() if isinstance(o, DagRun)),
                "tis_held": sum(1 for o in session.identity_map.values() if isinstance(o, TI)),
                "objects_held": len(session.identity_map),
            }
            created = session.scalar(
                select(func.count()).select_from(DagRun).where(DagRun.dag_id.like("daily_%"))
            )
            del dag_models
            return {"runs_created": created, **held}

        # warm: the serialized DAGs in the runner's bag, as in a running scheduler
        warm = settings.Session()
        create(warm)
        warm.rollback()
        warm.close()
        m = _measure(create)
        m.update(scenario="create_runs", size=d)
        _log(str(m))
        results.append(m)
    session.close()
    return results


# --- real scheduler -----------------------------------------------------------------------------------------


def _vm_hwm_mb(pid: int) -> float | None:
    """Peak RSS of a live process as the kernel counts it (VmHWM in /proc/<pid>/status)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def real_scheduler(home: str, events: int, mapped: int, timeout: float) -> dict:
    """A real `airflow scheduler` on the largest case: creates the asset run, schedules the mapped run."""
    import psutil
    from airflow import settings
    from airflow.models.dagrun import DagRun
    from airflow.models.pool import Pool
    from airflow.utils.types import DagRunType
    from sqlalchemy import func, select, update

    session = settings.Session()
    if session.scalar(select(Pool).where(Pool.pool == CLOSED_POOL)) is None:
        session.add(Pool(pool=CLOSED_POOL, slots=0, include_deferred=False))
    # only the largest cases are active
    from airflow.models.dag import DagModel

    keep = [f"asset_consumer_{events}", f"mapped_{mapped}"]
    session.execute(update(DagModel).values(is_paused=True))
    session.execute(update(DagModel).where(DagModel.dag_id.in_(keep)).values(is_paused=False))
    asset_id = _asset_id(session, f"memseries://bench/{events}")
    from airflow.models.asset import AssetDagRunQueue

    session.execute(AssetDagRunQueue.__table__.delete())
    session.commit()
    _queue(session, asset_id, f"asset_consumer_{events}", T0)
    session.close()
    settings.engine.dispose()

    env = {
        **os.environ,
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
    }
    log_path = os.path.join(home, "scheduler.log")
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "airflow", "scheduler"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    sampled = 0.0
    created_at = None
    start = time.monotonic()
    hwm = None
    try:
        ps = psutil.Process(proc.pid)
        while time.monotonic() - start < timeout:
            if proc.poll() is not None:
                raise RuntimeError(f"scheduler exited ({proc.returncode}); see {log_path}")
            with contextlib.suppress(psutil.Error):
                sampled = max(sampled, ps.memory_info().rss / MB)
            hwm = _vm_hwm_mb(proc.pid) or hwm
            if created_at is None:
                s = settings.Session()
                try:
                    # any state: the scheduler moves the new run from queued to running within a loop
                    n = s.scalar(
                        select(func.count())
                        .select_from(DagRun)
                        .where(
                            DagRun.dag_id == f"asset_consumer_{events}",
                            DagRun.run_type == DagRunType.ASSET_TRIGGERED,
                        )
                    )
                finally:
                    s.close()
                if n:
                    created_at = time.monotonic()
            elif time.monotonic() - created_at > 15:  # a few more loops over both runs
                break
            time.sleep(0.2)
    finally:
        hwm = _vm_hwm_mb(proc.pid) or hwm
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    result = {
        "scenario": "real_scheduler",
        "events": events,
        "mapped": mapped,
        "peak_rss_mb": round(hwm or 0.0, 1),
        "sampled_rss_mb": round(sampled, 1),
        "run_created_after_s": None if created_at is None else round(created_at - start, 1),
    }
    if created_at is None:
        with open(log_path) as f:
            result["error"] = (
                f"no asset-triggered run in {timeout:.0f}s; scheduler log tail: {f.read()[-1500:]}"
            )
    return result


def main(argv=None) -> int:
    args = _parse_args(argv)
    events, consumed, mapped, dags = map(_ints, (args.events, args.consumed, args.mapped, args.dags))
    results = []
    with _metadata_db(args.backend, args.pg_url) as home:
        import airflow
        from airflow import settings
        from airflow.jobs.job import Job
        from airflow.jobs.scheduler_job_runner import SchedulerJobRunner
        from airflow.utils.db import synchronize_log_template

        s = settings.Session()
        synchronize_log_template(session=s)
        s.commit()
        s.close()
        runner = SchedulerJobRunner(job=Job())
        version = airflow.__version__
        if events:
            results += scenario_asset_create(runner, events)
        if consumed:
            results += scenario_executor(consumed)
        if mapped:
            results += scenario_decisions(mapped)
        if dags:
            results += scenario_create_runs(runner, dags)
        if args.real_scheduler and events and mapped:
            try:
                results.append(real_scheduler(home, max(events), max(mapped), args.scheduler_timeout))
            except Exception as exc:  # noqa: BLE001 - keep the method measurements of this build
                results.append({"scenario": "real_scheduler", "error": repr(exc)[-1500:]})
            _log(str(results[-1]))
    print(json.dumps({"airflow_version": version, "backend": args.backend, "results": results}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
