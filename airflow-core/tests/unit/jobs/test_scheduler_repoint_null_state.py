"""Unfinished TaskInstances with no state move to a new DAG version too (3.3.2 patch 0001, apache/airflow#72153).

When a running run's DAG gets a new version, 3.3.2's ``SchedulerJobRunner._verify_integrity_if_dag_changed``
repoints the run's unfinished TIs with one bulk UPDATE filtered by ``TI.state.in_(State.unfinished)``.
``State.unfinished`` holds ``None``, but ``state IN (NULL, ...)`` never matches in SQL, so TIs not scheduled yet
kept the old ``dag_version_id``. Upstream fixed it for 3.4.0 with ``OR state IS NULL``; this is the backport.

A real DAG is serialized into the metadata DB twice, the way the dag-processor does it, so there are two
DagVersions; runs and TIs are created with ``SerializedDAG.create_dagrun`` and the scheduler's real per-run step
(``_schedule_dag_run``) or ``_verify_integrity_if_dag_changed`` runs over them.
"""

from __future__ import annotations

import datetime

import pytest
import time_machine
from sqlalchemy import event, select, update

pytestmark = pytest.mark.usefixtures("clear_db")

BUNDLE = "memseries-repoint"
DAG_ID = "repoint_null_state"
T0 = datetime.datetime(2026, 4, 1, 12, 0, tzinfo=datetime.timezone.utc)
# [core] min_serialized_dag_update_interval (30 s) keeps a DAG from being written again sooner
T_V2 = T0 + datetime.timedelta(minutes=10)
T1 = T0 + datetime.timedelta(hours=1)


def _unfinished():
    from airflow.utils.state import State

    return sorted(State.unfinished, key=lambda s: "" if s is None else s.value)


def _finished():
    from airflow.utils.state import State, TaskInstanceState

    # REMOVED is left out: verify_integrity restores a REMOVED TI whose task is back in the DAG (state None)
    return sorted(State.finished - {TaskInstanceState.REMOVED}, key=lambda s: s.value)


def _state_id(state) -> str:
    return "none" if state is None else state.value


def _write_dag(session, task_ids: list[str]):
    from airflow.dag_processing.collection import update_dag_parsing_results_in_db
    from airflow.models.dag import DagModel
    from airflow.models.dag_version import DagVersion
    from airflow.models.dagbundle import DagBundleModel
    from airflow.providers.standard.operators.empty import EmptyOperator
    from airflow.sdk import DAG
    from airflow.serialization.serialized_objects import LazyDeserializedDAG

    if session.get(DagBundleModel, BUNDLE) is None:
        session.add(DagBundleModel(name=BUNDLE))
        session.flush()
    with DAG(DAG_ID, schedule=None, start_date=T0 - datetime.timedelta(days=30)) as dag:
        for task_id in task_ids:
            EmptyOperator(task_id=task_id)
    errors: dict = {}
    update_dag_parsing_results_in_db(
        BUNDLE, None, [LazyDeserializedDAG.from_dag(dag)], errors, None, set(), session=session
    )
    assert not errors, errors
    session.execute(update(DagModel).where(DagModel.dag_id == DAG_ID).values(is_paused=False))
    session.commit()
    return DagVersion.get_latest_version(DAG_ID, session=session).id


def _create_run(session) -> str:
    from airflow.models.dagbag import DBDagBag
    from airflow.utils.state import DagRunState
    from airflow.utils.types import DagRunTriggeredByType, DagRunType

    sdag = DBDagBag().get_latest_version_of_dag(DAG_ID, session=session)
    logical_date = T0 - datetime.timedelta(days=1)
    dr = sdag.create_dagrun(
        run_id=f"manual__{DAG_ID}",
        logical_date=logical_date,
        data_interval=(logical_date, logical_date),
        run_after=logical_date,
        run_type=DagRunType.MANUAL,
        triggered_by=DagRunTriggeredByType.TEST,
        state=DagRunState.RUNNING,
        session=session,
    )
    session.commit()
    run_id = dr.run_id
    session.expunge_all()
    return run_id


@pytest.fixture
def clock(session):
    from airflow.utils.db import synchronize_log_template

    synchronize_log_template(session=session)  # clear_db empties log_template; create_dagrun needs it
    session.commit()
    with time_machine.travel(T0, tick=False) as traveller:
        yield traveller


@pytest.fixture
def runner():
    from airflow.jobs.job import Job
    from airflow.jobs.scheduler_job_runner import SchedulerJobRunner

    return SchedulerJobRunner(job=Job())


def _changed(session, clock, target_state):
    """A run on v1 with 'target' in target_state and 'other' without state; then v2 (adds 'added')."""
    from airflow.models.taskinstance import TaskInstance as TI

    v1 = _write_dag(session, ["target", "other"])
    run_id = _create_run(session)
    session.execute(update(TI).where(TI.task_id == "target").values(state=target_state))
    session.commit()
    clock.move_to(T_V2)
    v2 = _write_dag(session, ["target", "other", "added"])
    assert v1 != v2
    clock.move_to(T1)
    return v1, v2, run_id


def _examine(session):
    from airflow.models.dagrun import DagRun

    (dr,) = DagRun.get_running_dag_runs_to_examine(session=session)
    return dr


def _versions(session, run_id) -> dict[str, object]:
    from airflow.models.taskinstance import TaskInstance as TI

    session.expunge_all()
    return dict(session.execute(select(TI.task_id, TI.dag_version_id).where(TI.run_id == run_id)).all())


@pytest.mark.parametrize("state", _unfinished(), ids=_state_id)
def test_unfinished_tis_move_to_new_version(session, clock, runner, state):
    _, v2, run_id = _changed(session, clock, state)

    assert runner._verify_integrity_if_dag_changed(dag_run=_examine(session), session=session) is True
    session.commit()

    # "other" never got a state: on 3.3.2 it stayed on v1
    assert _versions(session, run_id) == {"target": v2, "other": v2, "added": v2}


@pytest.mark.parametrize("state", _finished(), ids=_state_id)
def test_finished_tis_keep_their_version(session, clock, runner, state):
    v1, v2, run_id = _changed(session, clock, state)

    assert runner._verify_integrity_if_dag_changed(dag_run=_examine(session), session=session) is True
    session.commit()

    assert _versions(session, run_id) == {"target": v1, "other": v2, "added": v2}


def test_scheduler_step_schedules_null_state_ti_on_new_version(session, clock, runner):
    """Through the scheduler's per-run step: the NULL-state TI it then schedules runs on the new version."""
    from airflow.models.taskinstance import TaskInstance as TI
    from airflow.utils.state import TaskInstanceState

    v1, v2, run_id = _changed(session, clock, TaskInstanceState.SUCCESS)

    runner._schedule_dag_run(_examine(session), session)
    session.commit()
    session.expunge_all()

    rows = {
        task_id: (state, version)
        for task_id, state, version in session.execute(
            select(TI.task_id, TI.state, TI.dag_version_id).where(TI.run_id == run_id)
        )
    }
    # EmptyOperator TIs are finished by the scheduler itself (schedule_tis), on the version they point to
    assert rows == {
        "target": (TaskInstanceState.SUCCESS, v1),
        "other": (TaskInstanceState.SUCCESS, v2),
        "added": (TaskInstanceState.SUCCESS, v2),
    }


def test_one_update_whose_filter_matches_null(session, clock, runner):
    """Still one UPDATE of task_instance per run, and its WHERE matches NULL with IS NULL on every dialect."""
    from sqlalchemy.dialects import mysql, postgresql, sqlite

    _changed(session, clock, None)
    dr = _examine(session)
    captured = []

    def _capture(orm_execute_state):
        if orm_execute_state.is_update:
            captured.append(orm_execute_state.statement)

    event.listen(session, "do_orm_execute", _capture)
    try:
        runner._verify_integrity_if_dag_changed(dag_run=dr, session=session)
    finally:
        event.remove(session, "do_orm_execute", _capture)

    ti_updates = [s for s in captured if s.table.name == "task_instance"]
    assert len(ti_updates) == 1
    for dialect in (sqlite.dialect(), postgresql.dialect(), mysql.dialect()):
        where = str(
            ti_updates[0].whereclause.compile(dialect=dialect, compile_kwargs={"literal_binds": True})
        )
        assert "task_instance.state IS NULL" in where, where


def test_dag_run_timeout_path_already_covers_null_state(session, clock, runner):
    """3.3.2's dag-run timeout path ORs ``IS NULL`` itself (no patch needed): a NULL-state TI is skipped."""
    from airflow.models.dag import DagModel
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance as TI
    from airflow.utils.state import DagRunState, TaskInstanceState

    _write_dag(session, ["a", "b"])
    run_id = _create_run(session)
    session.execute(update(DagRun).where(DagRun.run_id == run_id).values(start_date=T0))
    session.execute(update(TI).where(TI.task_id == "a").values(state=TaskInstanceState.SUCCESS))
    session.execute(update(DagModel).where(DagModel.dag_id == DAG_ID).values(relative_fileloc="dag.py"))
    session.commit()
    clock.move_to(T1)
    dr = _examine(session)
    # the scheduler's DAG bag caches the deserialized DAG per version: give that DAG a timeout
    dag = runner.scheduler_dag_bag.get_dag_for_run(dag_run=dr, session=session)
    dag.dagrun_timeout = datetime.timedelta(minutes=5)

    runner._schedule_dag_run(dr, session)
    session.commit()

    assert dr.state == DagRunState.FAILED
    session.expunge_all()
    states = dict(session.execute(select(TI.task_id, TI.state).where(TI.run_id == run_id)).all())
    assert states == {"a": TaskInstanceState.SUCCESS, "b": TaskInstanceState.SKIPPED}
