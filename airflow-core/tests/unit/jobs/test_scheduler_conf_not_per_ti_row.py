"""The scheduler does not load a run's ``conf`` once per TaskInstance row (3.3.2 patch 0002, apache/airflow#71267).

``TaskInstance.dag_run`` is eagerly joined, so on 3.3.2 every TaskInstance query of the scheduling loop selects
the run's JSON ``conf`` on every row and SQLAlchemy decodes it per row. Here a DAG maps one task over
``N_MAPPED`` items and its run is triggered with a ~256 KiB conf; the real scheduler code paths run against a
real metadata DB (DAG serialized like the dag-processor does it, run created with ``create_dagrun``):

- ``_schedule_dag_run`` (``task_instance_scheduling_decisions`` -> ``DagRun.fetch_task_instances``, readiness
  checks incl. ``MappedTaskUpstreamDep``, mapped expansion, ``schedule_tis``), first expanding the mapped task,
  then once more over the expanded TIs;
- the critical section ``_executable_task_instances_to_queued``;
- executor-event processing ``process_executor_events``;
- the dag-run timeout path of ``_schedule_dag_run``.

For each it asserts: no SELECT that loads TaskInstance rows carries ``dag_run.conf``; the traced heap peak with
the big conf exceeds the peak of the same step for an identical DAG with a tiny conf by less than
``HEAP_SLACK_CONFS`` conf sizes (3.3.2: ~``N_MAPPED`` decoded copies); and the number of statements is the same
as 3.3.2's (measured on unpatched 3.3.2, SQLite and PostgreSQL; ``EXPECTED_STATEMENTS``). ``conf`` stays
loadable on demand, and failure callbacks built from such TIs still carry the full conf (3.3.2's callback
datamodel copies only loaded attributes, so a merely deferred conf would reach them as ``None``).
"""

from __future__ import annotations

import datetime
import gc
import re
import tracemalloc

import pytest
import time_machine
from sqlalchemy import event, func, select, update

pytestmark = pytest.mark.usefixtures("clear_db")

BUNDLE = "memseries-conf"
BIG = "conf_big"
SMALL = "conf_small"
N_MAPPED = 200
# ~256 KiB of JSON in many small strings, like a real payload (list of records), not one big string
BIG_CONF = {"records": [{"id": i, "text": "x" * 1000} for i in range(256)], "pick": "needle"}
SMALL_CONF = {"pick": "needle"}
HEAP_SLACK_CONFS = 6
T0 = datetime.datetime(2026, 3, 1, 12, 0, tzinfo=datetime.timezone.utc)
T1 = T0 + datetime.timedelta(minutes=1)
# a SELECT that returns dag_run.conf (plain or eager-join alias) next to task_instance columns
_CONF_COLUMN = re.compile(r"\bdag_run(?:_\d+)?\.conf\b")
_TI_FROM = re.compile(r"\bFROM task_instance\b|\bJOIN task_instance\b")


def _conf_size() -> int:
    import json

    return len(json.dumps(BIG_CONF))


def failure_callback(context):  # pragma: no cover - only its presence is serialized
    pass


class _Statements:
    """Every statement the engine executes (an executemany counts once per parameter set)."""

    def __init__(self, engine):
        self.engine = engine
        self.statements: list[str] = []

    def _listener(self, conn, cursor, statement, parameters, context, executemany):
        self.statements.extend([statement] * (len(parameters) if executemany else 1))

    def __enter__(self):
        event.listen(self.engine, "before_cursor_execute", self._listener)
        return self

    def __exit__(self, *exc):
        event.remove(self.engine, "before_cursor_execute", self._listener)

    @property
    def count(self) -> int:
        return len(self.statements)

    def ti_selects_with_conf(self) -> list[str]:
        return [
            s
            for s in self.statements
            if s.lstrip().upper().startswith("SELECT") and _TI_FROM.search(s) and _CONF_COLUMN.search(s)
        ]


def _write_dag(session, dag_id: str, **dag_kwargs) -> None:
    from airflow.dag_processing.collection import update_dag_parsing_results_in_db
    from airflow.models.dag import DagModel
    from airflow.models.dagbundle import DagBundleModel
    from airflow.providers.standard.operators.bash import BashOperator
    from airflow.sdk import DAG
    from airflow.serialization.serialized_objects import LazyDeserializedDAG

    if session.get(DagBundleModel, BUNDLE) is None:
        session.add(DagBundleModel(name=BUNDLE))
        session.flush()
    with DAG(
        dag_id, schedule=None, start_date=T0 - datetime.timedelta(days=3), max_active_tasks=1000, **dag_kwargs
    ) as dag:
        BashOperator.partial(task_id="mapped", on_failure_callback=failure_callback).expand(
            bash_command=[f"echo {i}" for i in range(N_MAPPED)]
        )
    errors: dict = {}
    update_dag_parsing_results_in_db(
        BUNDLE, None, [LazyDeserializedDAG.from_dag(dag)], errors, None, set(), session=session
    )
    assert not errors, errors
    # a DAG file path relative to its bundle, as the dag-processor records it (callbacks name the file)
    session.execute(
        update(DagModel)
        .where(DagModel.dag_id == dag_id)
        .values(is_paused=False, relative_fileloc=f"{dag_id}.py")
    )
    session.commit()


def _create_run(session, dag_id: str, conf: dict, *, start_date=None) -> str:
    from airflow.models.dagbag import DBDagBag
    from airflow.utils.state import DagRunState
    from airflow.utils.types import DagRunTriggeredByType, DagRunType

    sdag = DBDagBag().get_latest_version_of_dag(dag_id, session=session)
    dr = sdag.create_dagrun(
        run_id=f"manual__{dag_id}",
        logical_date=T0,
        data_interval=(T0, T0),
        run_after=T0,
        run_type=DagRunType.MANUAL,
        triggered_by=DagRunTriggeredByType.TEST,
        state=DagRunState.RUNNING,
        conf=conf,
        session=session,
    )
    if start_date is not None:
        dr.start_date = start_date
    session.commit()
    run_id = dr.run_id
    session.expunge_all()
    return run_id


def _only_dag(session, dag_id: str) -> None:
    """Unpause dag_id, pause every other DAG (the critical section and the examine query look at all)."""
    from airflow.models.dag import DagModel

    session.execute(update(DagModel).values(is_paused=DagModel.dag_id != dag_id))
    session.commit()


def _examine(session, dag_id: str):
    from airflow.models.dagrun import DagRun

    _only_dag(session, dag_id)
    (dr,) = DagRun.get_running_dag_runs_to_examine(session=session)
    return dr


def _measure(session, fn):
    """Run fn under tracemalloc and a statement counter: (result, peak bytes, _Statements)."""
    gc.collect()
    tracemalloc.start()
    try:
        with _Statements(session.get_bind()) as statements:
            result = fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak, statements


@pytest.fixture
def setup(session):
    from airflow.models.pool import Pool
    from airflow.utils.db import synchronize_log_template

    synchronize_log_template(session=session)  # clear_db empties log_template; create_dagrun needs it
    # every mapped TI fits into the default pool (128 slots after `airflow db migrate`)
    (default_slots,) = session.execute(select(Pool.slots).where(Pool.pool == Pool.DEFAULT_POOL_NAME)).one()
    session.execute(update(Pool).where(Pool.pool == Pool.DEFAULT_POOL_NAME).values(slots=10 * N_MAPPED))
    session.commit()
    try:
        with time_machine.travel(T0, tick=False):
            for dag_id in (BIG, SMALL):
                _write_dag(session, dag_id)
            runs = {BIG: _create_run(session, BIG, BIG_CONF), SMALL: _create_run(session, SMALL, SMALL_CONF)}
        with time_machine.travel(T1, tick=False):
            yield runs
    finally:
        session.rollback()
        session.execute(update(Pool).where(Pool.pool == Pool.DEFAULT_POOL_NAME).values(slots=default_slots))
        session.commit()


@pytest.fixture
def runner(session):
    from airflow.executors.local_executor import LocalExecutor
    from airflow.jobs.job import Job
    from airflow.jobs.scheduler_job_runner import SchedulerJobRunner

    job = Job()
    session.add(job)
    session.commit()
    # the executor is never started: only its event buffer and send_callback are used
    return SchedulerJobRunner(job=job, executors=[LocalExecutor(parallelism=10 * N_MAPPED)])


# Statements per step, measured on unpatched 3.3.2 with this module's DAGs and runs: the patch changes which
# columns are selected, not how many statements run. (The critical section runs one statement more on
# PostgreSQL than on SQLite, on the base and patched alike.)
EXPECTED_STATEMENTS = {
    "sqlite": {"expand": 220, "schedule": 6, "critical_section": 6, "executor_events": 4},
    "postgres": {"expand": 220, "schedule": 6, "critical_section": 7, "executor_events": 4},
}


def _schedule(session, runner, dag_id):
    dr = _examine(session, dag_id)
    return lambda: runner._schedule_dag_run(dr, session)


def _steps(session, runner, dag_id):
    """Run the loop's steps over dag_id's run in order; yield (step, peak, statements) for each."""
    from airflow.models.taskinstance import TaskInstance as TI
    from airflow.utils.state import TaskInstanceState

    # 1. first _schedule_dag_run: the mapped task is expanded into N_MAPPED TIs, which get scheduled
    _, peak, st = _measure(session, _schedule(session, runner, dag_id))
    session.commit()
    session.expunge_all()
    yield "expand", peak, st
    states = dict(
        session.execute(select(TI.state, func.count()).where(TI.dag_id == dag_id).group_by(TI.state)).all()
    )
    assert states == {TaskInstanceState.SCHEDULED: N_MAPPED}
    # 2. the next _schedule_dag_run over the N_MAPPED scheduled TIs (all already scheduled: nothing to do)
    _, peak, st = _measure(session, _schedule(session, runner, dag_id))
    session.commit()
    session.expunge_all()
    yield "schedule", peak, st
    # 3. the critical section queues them all
    queued, peak, st = _measure(
        session, lambda: runner._executable_task_instances_to_queued(max_tis=10 * N_MAPPED, session=session)
    )
    assert len(queued) == N_MAPPED
    session.commit()
    session.expunge_all()
    yield "critical_section", peak, st
    # 4. the executor reports them all finished with success
    executor = runner.executor
    for ti in session.scalars(select(TI).where(TI.dag_id == dag_id)):
        executor.event_buffer[ti.key] = (TaskInstanceState.SUCCESS, None)
    session.expunge_all()
    session.execute(update(TI).where(TI.dag_id == dag_id).values(state=TaskInstanceState.SUCCESS))
    session.commit()
    _, peak, st = _measure(session, lambda: runner._process_executor_events(executor, session))
    session.commit()
    session.expunge_all()
    yield "executor_events", peak, st


_MEASURED: dict = {}


@pytest.fixture
def measured(request):
    """{dag_id: {step: (peak, statements)}} for the big-conf and the tiny-conf DAG, measured once per session."""
    if not _MEASURED:
        session = request.getfixturevalue("session")
        request.getfixturevalue("setup")
        runner = request.getfixturevalue("runner")
        for dag_id in (BIG, SMALL):
            _MEASURED[dag_id] = {step: (peak, st) for step, peak, st in _steps(session, runner, dag_id)}
    return _MEASURED


STEPS = ["expand", "schedule", "critical_section", "executor_events"]


@pytest.mark.parametrize("step", STEPS)
def test_no_task_instance_select_carries_conf(measured, step):
    _, st = measured[BIG][step]
    assert st.ti_selects_with_conf() == []


@pytest.mark.parametrize("step", STEPS)
def test_heap_does_not_grow_with_conf_times_task_instances(measured, step):
    big, _ = measured[BIG][step]
    small, _ = measured[SMALL][step]
    # 3.3.2: ~N_MAPPED decoded copies of the conf (~100x the conf); patched: at most a few copies
    assert big - small < HEAP_SLACK_CONFS * _conf_size(), (
        f"{step}: peak {big / 2**20:.1f} MiB with a {_conf_size() / 2**10:.0f} KiB conf vs "
        f"{small / 2**20:.1f} MiB with a tiny conf"
    )


@pytest.mark.parametrize("step", STEPS)
def test_same_statement_count_as_base(measured, backend, step):
    _, big = measured[BIG][step]
    _, small = measured[SMALL][step]
    # A big conf costs no extra statement. Against 3.3.2's own counts, later patches of the series move a step by
    # one on purpose: 0004 reads finished TIs with one more column SELECT (expand, schedule), 0005 drops the eager
    # consumed-asset-event SELECT (executor events); anything beyond that is a regression.
    assert big.count == small.count
    assert abs(big.count - EXPECTED_STATEMENTS[backend][step]) <= 1, (big.count, EXPECTED_STATEMENTS[backend][step])


def test_fetch_task_instances_loads_conf_on_demand(session, setup, runner):
    from airflow.models.dagrun import DagRun

    _measure(session, _schedule(session, runner, BIG))  # expand
    session.commit()
    session.expunge_all()

    tis, _, st = _measure(
        session, lambda: DagRun.fetch_task_instances(dag_id=BIG, run_id=setup[BIG], session=session)
    )
    assert len(tis) == N_MAPPED
    assert st.count == 1
    assert st.ti_selects_with_conf() == []
    assert len({id(ti.dag_run) for ti in tis}) == 1  # one run object, as before
    with _Statements(session.get_bind()) as on_demand:
        assert tis[0].dag_run.conf == BIG_CONF
        assert tis[-1].dag_run.conf["pick"] == "needle"
    assert on_demand.count == 1  # one SELECT for the run's conf, not one per TI


def test_run_examined_first_keeps_its_conf(session, setup, runner):
    """The runs the scheduler examines come with conf; fetching their TIs neither drops nor reloads it."""
    dr = _examine(session, BIG)
    tis = dr.get_task_instances(session=session)
    assert {id(ti.dag_run) for ti in tis} == {id(dr)}
    with _Statements(session.get_bind()) as st:
        assert dr.conf == BIG_CONF
    assert st.count == 0


def test_executor_failure_callback_gets_full_conf(session, setup, runner):
    """A TI the executor reports finished while it is still queued: its failure callback carries the conf."""
    from airflow.models.taskinstance import TaskInstance as TI
    from airflow.utils.state import TaskInstanceState

    for _ in range(2):  # expand, then queue
        _measure(session, _schedule(session, runner, BIG))
        session.commit()
        session.expunge_all()
    queued = runner._executable_task_instances_to_queued(max_tis=10 * N_MAPPED, session=session)
    assert len(queued) == N_MAPPED
    session.commit()
    session.expunge_all()

    executor = runner.executor
    sent = []
    executor.send_callback = sent.append
    failed = session.scalars(select(TI).where(TI.dag_id == BIG, TI.map_index.in_([0, 1, 2]))).all()
    for ti in failed:
        assert ti.state == TaskInstanceState.QUEUED
        executor.event_buffer[ti.key] = (TaskInstanceState.FAILED, None)
    session.expunge_all()

    _, _, st = _measure(session, lambda: runner._process_executor_events(executor, session))
    session.commit()

    assert [r.ti.map_index for r in sent] == [0, 1, 2]
    for request in sent:
        assert request.context_from_server.dag_run.conf == BIG_CONF
    assert st.ti_selects_with_conf() == []
    # the conf is loaded once for the run (one extra SELECT on this failure path), not per TI
    conf_loads = [s for s in st.statements if _CONF_COLUMN.search(s) and not _TI_FROM.search(s)]
    assert len(conf_loads) == 1, conf_loads
    assert {ti.state for ti in session.scalars(select(TI).where(TI.dag_id == BIG, TI.map_index < 3))} == {
        TaskInstanceState.FAILED
    }


def test_dag_run_timeout_skips_unfinished_and_callback_gets_full_conf(session, setup, runner):
    """The timed-out run's unfinished TIs (NULL state included) are skipped; its callback carries the conf."""
    from airflow.models.taskinstance import TaskInstance as TI
    from airflow.utils.state import DagRunState, TaskInstanceState

    dag_id = "conf_timeout"
    with time_machine.travel(T0, tick=False):
        _write_dag(session, dag_id, dagrun_timeout=datetime.timedelta(minutes=30))
        _create_run(session, dag_id, BIG_CONF, start_date=T0)
    _measure(session, _schedule(session, runner, dag_id))  # expand: N_MAPPED scheduled TIs
    session.commit()
    session.expunge_all()
    # a few TIs without any state, one finished
    session.execute(update(TI).where(TI.dag_id == dag_id, TI.map_index < 5).values(state=None))
    session.execute(update(TI).where(TI.dag_id == dag_id, TI.map_index == 5).values(state="success"))
    session.commit()

    with time_machine.travel(T0 + datetime.timedelta(hours=1), tick=False):
        dr = _examine(session, dag_id)
        callback, _, st = _measure(session, lambda: runner._schedule_dag_run(dr, session))
        session.commit()

    assert st.ti_selects_with_conf() == []
    assert dr.state == DagRunState.FAILED
    assert callback is not None
    assert callback.context_from_server.dag_run.conf == BIG_CONF
    session.expunge_all()
    states = dict(
        session.execute(
            select(TI.map_index, TI.state).where(TI.dag_id == dag_id, TI.map_index.in_([0, 4, 5, 6]))
        ).all()
    )
    assert states == {
        0: TaskInstanceState.SKIPPED,
        4: TaskInstanceState.SKIPPED,
        5: TaskInstanceState.SUCCESS,
        6: TaskInstanceState.SKIPPED,
    }


def test_datamodel_loads_deferred_conf_of_attached_run(session, setup):
    """The callback datamodel must not turn a deferred conf into None."""
    from airflow.api_fastapi.execution_api.datamodels.taskinstance import DagRun as DRDataModel
    from airflow.models.dagrun import DagRun
    from sqlalchemy.orm import defer

    dr = session.scalars(select(DagRun).where(DagRun.dag_id == BIG).options(defer(DagRun.conf))).one()
    assert DRDataModel.model_validate(dr, from_attributes=True).conf == BIG_CONF
