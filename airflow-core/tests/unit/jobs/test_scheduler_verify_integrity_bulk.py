"""SchedulerJobRunner._verify_integrity_if_dag_changed repoints TIs with one UPDATE (patch 0003, PR #60956).

When a running DAG run's DAG got a new version, every unfinished TaskInstance of the run must move to the
latest ``dag_version_id`` (finished ones keep the version they ran with). 3.1.3 did that by loading every TI
of the run into the session; the patch issues one bulk UPDATE per run instead. ``State.unfinished``
contains ``None``, and ``state IN (NULL, ...)`` never matches in SQL, so NULL-state TIs are covered here
explicitly on every backend.

Real DAGs are serialized into the metadata DB the way the dag-processor does it, twice, giving two
DagVersions; runs and TIs are created with ``SerializedDAG.create_dagrun``.
"""

from __future__ import annotations

import datetime
import re

import pytest
import time_machine
from airflow.models.dag import DagModel
from airflow.models.dag_version import DagVersion
from airflow.models.dagbundle import DagBundleModel
from airflow.models.dagcode import DagCode
from airflow.models.dagrun import DagRun
from airflow.models.serialized_dag import SerializedDagModel
from airflow.models.taskinstance import TaskInstance as TI
from airflow.utils.state import DagRunState, State, TaskInstanceState
from airflow.utils.types import DagRunTriggeredByType, DagRunType
from sqlalchemy import delete, event, inspect, select, update

pytestmark = pytest.mark.usefixtures("clear_db")

BUNDLE = "memseries-verify"
DAG_ID = "verify_integrity_bulk"
# The runs are created at T0 and the scheduler looks at them at T1. Both lie in the past, so the examine
# query's ``run_after <= now()`` (evaluated by the database, which time-machine does not move) holds.
T0 = datetime.datetime(2026, 3, 1, 12, 0, tzinfo=datetime.timezone.utc)
T1 = T0 + datetime.timedelta(hours=1)
# The dag-processor path skips writing a DAG again within [core] min_serialized_dag_update_interval (30 s)
# of the last write: the new version is written at T0 + 10 min.
T_V2 = T0 + datetime.timedelta(minutes=10)

UNFINISHED = sorted(State.unfinished, key=lambda s: "" if s is None else s.value)
FINISHED = sorted(State.finished, key=lambda s: s.value)


def _state_id(state) -> str:
    return "none" if state is None else state.value


def _write_dag(session, task_ids: list[str], dag_id: str = DAG_ID) -> DagVersion:
    """Serialize a real DAG into the metadata DB exactly like the dag-processor; return the latest version."""
    from airflow.dag_processing.collection import update_dag_parsing_results_in_db
    from airflow.providers.standard.operators.empty import EmptyOperator
    from airflow.sdk import DAG
    from airflow.serialization.serialized_objects import LazyDeserializedDAG

    if session.get(DagBundleModel, BUNDLE) is None:
        session.add(DagBundleModel(name=BUNDLE))
        session.flush()
    with DAG(dag_id, schedule=None, start_date=T0 - datetime.timedelta(days=30)) as dag:
        for task_id in task_ids:
            EmptyOperator(task_id=task_id)
    errors: dict = {}
    update_dag_parsing_results_in_db(
        BUNDLE, None, [LazyDeserializedDAG.from_dag(dag)], errors, None, set(), session=session
    )
    assert not errors, errors
    session.execute(update(DagModel).where(DagModel.dag_id == dag_id).values(is_paused=False))
    session.commit()
    return DagVersion.get_latest_version(dag_id, session=session)


def _create_runs(session, count: int, dag_id: str = DAG_ID) -> list[str]:
    from airflow.models.dagbag import DBDagBag

    sdag = DBDagBag().get_latest_version_of_dag(dag_id, session=session)
    run_ids = []
    for i in range(count):
        logical_date = T0 - datetime.timedelta(days=i + 1)
        dr = sdag.create_dagrun(
            run_id=f"manual__{dag_id}_{i}",
            logical_date=logical_date,
            data_interval=(logical_date, logical_date),
            run_after=logical_date,
            run_type=DagRunType.MANUAL,
            triggered_by=DagRunTriggeredByType.TEST,
            state=DagRunState.RUNNING,
            session=session,
        )
        run_ids.append(dr.run_id)
    session.commit()
    session.expunge_all()
    return run_ids


def _set_state(session, task_id: str, state) -> None:
    session.execute(update(TI).where(TI.task_id == task_id).values(state=state))
    session.commit()


def _tis(session, run_id: str) -> dict[str, TI]:
    return {ti.task_id: ti for ti in session.scalars(select(TI).where(TI.run_id == run_id))}


def _examine(session) -> list[DagRun]:
    return list(DagRun.get_running_dag_runs_to_examine(session=session))


class _StatementCounter:
    """Counts statements the database executes: an executemany of N parameter sets counts N."""

    def __init__(self, engine):
        self.engine = engine
        self.statements: list[tuple[str, int]] = []

    def _listener(self, conn, cursor, statement, parameters, context, executemany):
        self.statements.append((statement, len(parameters) if executemany else 1))

    def __enter__(self):
        event.listen(self.engine, "before_cursor_execute", self._listener)
        return self

    def __exit__(self, *exc):
        event.remove(self.engine, "before_cursor_execute", self._listener)

    @property
    def total(self) -> int:
        return sum(n for _, n in self.statements)

    def ti_updates(self) -> list[int]:
        return [n for s, n in self.statements if s.lstrip().upper().startswith("UPDATE TASK_INSTANCE")]


@pytest.fixture
def clock(session):
    from airflow.utils.db import synchronize_log_template

    # clear_db empties log_template too; create_dagrun needs its row (written by `airflow db migrate`).
    synchronize_log_template(session=session)
    session.commit()
    with time_machine.travel(T0, tick=False) as traveller:
        yield traveller


@pytest.fixture
def runner():
    from airflow.jobs.job import Job
    from airflow.jobs.scheduler_job_runner import SchedulerJobRunner

    # Executors are never touched by _verify_integrity_if_dag_changed (Job loads them lazily).
    return SchedulerJobRunner(job=Job())


def _changed_dag(session, clock, *, target_state, n_runs: int = 1):
    """v1 has target/removed/other tasks; runs are created on v1; v2 drops 'removed' and adds 'added'."""
    v1 = _write_dag(session, ["target", "other", "removed"])
    run_ids = _create_runs(session, n_runs)
    _set_state(session, "target", target_state)
    clock.move_to(T_V2)
    v2 = _write_dag(session, ["target", "other", "added"])
    assert v1.id != v2.id
    clock.move_to(T1)
    return v1.id, v2.id, run_ids


@pytest.mark.parametrize("state", UNFINISHED, ids=_state_id)
def test_each_unfinished_state_is_repointed(session, clock, runner, state):
    v1, v2, (run_id,) = _changed_dag(session, clock, target_state=state)
    (dr,) = _examine(session)

    assert runner._verify_integrity_if_dag_changed(dag_run=dr, session=session) is True
    session.commit()
    session.expunge_all()

    target = _tis(session, run_id)["target"]
    assert target.state == state
    assert target.dag_version_id == v2
    assert target.updated_at == T1  # touched at the scheduler's "now", like the ORM flush did


@pytest.mark.parametrize("state", FINISHED, ids=_state_id)
def test_each_finished_state_keeps_its_version(session, clock, runner, state):
    v1, v2, (run_id,) = _changed_dag(session, clock, target_state=state)
    (dr,) = _examine(session)

    assert runner._verify_integrity_if_dag_changed(dag_run=dr, session=session) is True
    session.commit()
    session.expunge_all()

    tis = _tis(session, run_id)
    # REMOVED whose task is still in the DAG is "restored" to None by verify_integrity, as before the patch
    restored = state == TaskInstanceState.REMOVED
    assert tis["target"].state == (None if restored else state)
    assert tis["target"].dag_version_id == v1
    assert tis["target"].updated_at == (T1 if restored else T0)
    assert tis["other"].dag_version_id == v2  # the unfinished neighbour did move


def test_added_and_removed_tasks(session, clock, runner):
    v1, v2, (run_id,) = _changed_dag(session, clock, target_state=TaskInstanceState.SUCCESS)
    (dr,) = _examine(session)

    assert runner._verify_integrity_if_dag_changed(dag_run=dr, session=session) is True
    session.commit()
    session.expunge_all()

    tis = _tis(session, run_id)
    assert set(tis) == {"target", "other", "removed", "added"}
    # a task new in v2 gets its TI, created on v2
    assert tis["added"].state is None
    assert tis["added"].dag_version_id == v2
    # a task gone in v2, in a *running* run: verify_integrity leaves its state alone (as in 3.1.3, the
    # run's update_state deals with it); being unfinished, it is repointed like any other unfinished TI
    assert tis["removed"].state is None
    assert tis["removed"].dag_version_id == v2


def test_unchanged_dag_touches_nothing(session, clock, runner):
    v1 = _write_dag(session, ["a", "b"]).id
    (run_id,) = _create_runs(session, 1)
    clock.move_to(T1)
    (dr,) = _examine(session)

    with _StatementCounter(session.get_bind()) as counter:
        assert runner._verify_integrity_if_dag_changed(dag_run=dr, session=session) is True
    assert counter.ti_updates() == []
    assert [obj for obj in session.identity_map.values() if isinstance(obj, TI)] == []
    session.commit()
    session.expunge_all()
    assert {ti.dag_version_id for ti in _tis(session, run_id).values()} == {v1}


def test_one_bulk_update_per_run_and_no_ti_loaded_before_verify_integrity(session, clock, runner):
    """The repointing is one UPDATE (one parameter set) per run and puts no TI into the session."""
    v1, v2, run_ids = _changed_dag(session, clock, target_state=TaskInstanceState.RUNNING, n_runs=3)
    dag_runs = _examine(session)
    assert len(dag_runs) == 3
    engine = session.get_bind()

    verify_integrity_calls = []
    original = DagRun.verify_integrity

    def spy(self, *args, **kwargs):
        # at this point the repointing is done: no TI may have been loaded for it
        verify_integrity_calls.append([o for o in session.identity_map.values() if isinstance(o, TI)])
        return original(self, *args, **kwargs)

    DagRun.verify_integrity = spy
    try:
        for dr in dag_runs:
            session.expunge_all()
            session.add(dr)
            with _StatementCounter(engine) as counter:
                runner._verify_integrity_if_dag_changed(dag_run=dr, session=session)
            assert counter.ti_updates() == [1], counter.statements
    finally:
        DagRun.verify_integrity = original
    assert verify_integrity_calls == [[], [], []]


def test_statements_do_not_grow_with_task_instances(session, clock, runner):
    """examine + verify for N runs: the same number of statements for 4 and for 60 tasks per run."""
    totals = {}
    for n_tasks in (4, 60):
        dag_id = f"verify_grow_{n_tasks}"
        clock.move_to(T0)
        _write_dag(session, [f"t{i}" for i in range(n_tasks)], dag_id=dag_id)
        _create_runs(session, 3, dag_id=dag_id)
        session.execute(update(TI).where(TI.dag_id == dag_id, TI.task_id == "t0").values(state="success"))
        clock.move_to(T_V2)
        _write_dag(session, [f"t{i}" for i in range(n_tasks)] + ["added"], dag_id=dag_id)
        session.execute(update(DagModel).where(DagModel.dag_id != dag_id).values(is_paused=True))
        session.commit()
        session.expunge_all()
        clock.move_to(T1)

        with _StatementCounter(session.get_bind()) as counter:
            dag_runs = _examine(session)
            assert len(dag_runs) == 3
            for dr in dag_runs:
                assert runner._verify_integrity_if_dag_changed(dag_run=dr, session=session) is True
            session.flush()
        totals[n_tasks] = (counter.total, counter.ti_updates())
        session.commit()
        session.expunge_all()
        latest = DagVersion.get_latest_version(dag_id, session=session).id
        versions = {
            (ti.task_id == "t0", ti.dag_version_id == latest)
            for ti in session.scalars(select(TI).where(TI.dag_id == dag_id))
        }
        assert versions == {(True, False), (False, True)}

    assert totals[4] == totals[60], totals
    assert totals[4][1] == [1, 1, 1]


def test_task_instances_read_after_show_new_version(session, clock, runner):
    v1, v2, (run_id,) = _changed_dag(session, clock, target_state=TaskInstanceState.SUCCESS)
    (dr,) = _examine(session)

    assert runner._verify_integrity_if_dag_changed(dag_run=dr, session=session) is True
    by_task = {ti.task_id: ti.dag_version_id for ti in dr.task_instances}
    assert by_task == {"target": v1, "other": v2, "removed": v2, "added": v2}


def test_task_instances_already_in_session_are_not_stale(session, clock, runner):
    """If the run's TIs were loaded before (by any earlier code path), the session serves no old version."""
    v1, v2, (run_id,) = _changed_dag(session, clock, target_state=TaskInstanceState.SUCCESS)
    (dr,) = _examine(session)
    before = {ti.task_id: ti.dag_version_id for ti in dr.task_instances}
    assert before == {"target": v1, "other": v1, "removed": v1}

    assert runner._verify_integrity_if_dag_changed(dag_run=dr, session=session) is True
    by_task = {ti.task_id: ti.dag_version_id for ti in dr.task_instances}
    assert by_task == {"target": v1, "other": v2, "removed": v2, "added": v2}
    session.commit()
    session.expunge_all()
    assert {k: ti.dag_version_id for k, ti in _tis(session, run_id).items()} == by_task


def test_update_statement_matches_null_on_every_dialect(session, clock, runner):
    """The UPDATE must match NULL state with IS NULL: ``IN (NULL, ...)`` is never true in SQL (MySQL too)."""
    from sqlalchemy.dialects import mysql, postgresql, sqlite

    _changed_dag(session, clock, target_state=None)
    (dr,) = _examine(session)
    captured = []

    def _capture(orm_execute_state):
        if orm_execute_state.is_update:
            captured.append(orm_execute_state.statement)

    event.listen(session, "do_orm_execute", _capture)
    try:
        runner._verify_integrity_if_dag_changed(dag_run=dr, session=session)
    finally:
        event.remove(session, "do_orm_execute", _capture)

    assert len(captured) == 1
    for dialect in (sqlite.dialect(), postgresql.dialect(), mysql.dialect()):
        where = sql = str(
            captured[0].whereclause.compile(dialect=dialect, compile_kwargs={"literal_binds": True})
        )
        match = re.fullmatch(
            r"task_instance\.dag_id = '(.+)' AND task_instance\.run_id = '(.+)' AND "
            r"\(task_instance\.state IN \((.+)\) OR task_instance\.state IS NULL\)",
            where,
        )
        assert match, sql
        assert match.group(1, 2) == (dr.dag_id, dr.run_id)
        # the IN list: every non-NULL unfinished state, in any order, and nothing else
        assert sorted(match.group(3).split(", ")) == sorted(f"'{s.value}'" for s in State.unfinished - {None})


def test_no_latest_version_touches_nothing(session, clock, runner):
    _write_dag(session, ["a", "b"])
    (run_id,) = _create_runs(session, 1)
    # the DAG's versions are gone (e.g. cleaned up) while a run of it is still running
    session.execute(update(TI).where(TI.dag_id == DAG_ID).values(dag_version_id=None))
    session.execute(update(DagRun).where(DagRun.dag_id == DAG_ID).values(created_dag_version_id=None))
    session.execute(delete(SerializedDagModel).where(SerializedDagModel.dag_id == DAG_ID))
    session.execute(delete(DagCode).where(DagCode.dag_id == DAG_ID))
    session.execute(delete(DagVersion).where(DagVersion.dag_id == DAG_ID))
    session.commit()
    clock.move_to(T1)
    (dr,) = _examine(session)

    with _StatementCounter(session.get_bind()) as counter:
        assert runner._verify_integrity_if_dag_changed(dag_run=dr, session=session) is False
        session.flush()
    assert counter.ti_updates() == []
    session.commit()
    session.expunge_all()
    tis = _tis(session, run_id)
    assert {(ti.state, ti.dag_version_id, ti.updated_at) for ti in tis.values()} == {(None, None, T0)}


def test_scheduler_loop_step_repoints_changed_run(session, clock, runner):
    """Through the real per-run scheduling step (_schedule_dag_run), with the scheduler's clock at T1."""
    v1, v2, (run_id,) = _changed_dag(session, clock, target_state=TaskInstanceState.FAILED)
    (dr,) = _examine(session)
    assert "task_instances" in inspect(dr).unloaded

    runner._schedule_dag_run(dr, session)
    session.commit()
    session.expunge_all()

    tis = _tis(session, run_id)
    assert tis["target"].dag_version_id == v1
    assert {tis[t].dag_version_id for t in ("other", "removed", "added")} == {v2}
