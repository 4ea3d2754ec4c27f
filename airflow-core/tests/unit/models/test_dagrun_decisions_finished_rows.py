"""Scheduling decisions read finished task instances as light records (3.3.2 patch 0004, PR #71737).

Airflow 3.3.2's ``DagRun.task_instance_scheduling_decisions`` loads every TaskInstance of the run as an ORM
object joined to its run, finished ones included, although the decision only counts finished TIs by state per
task (trigger rules), reads leaf states and start/end dates. The patch loads the unfinished TIs as ORM objects
and selects the finished ones' columns as ``FinishedTIRow`` records. These tests check:

- the DB state after a real scheduling pass (``update_state``), the schedulable TIs and the DAG callback request
  (including which TI it names) equal the expected values written here, which are 3.3.2's (pass on both builds);
- a finished TI whose task left the DAG is still marked ``removed``;
- bounded behaviour, by counts: the TaskInstances materialised and held in the session by the decision do not
  grow with the number of finished TIs (fails on 3.3.2, which loads every one).
"""

from __future__ import annotations

import datetime

import pytest
import time_machine
from airflow.models.dag import DagModel
from airflow.models.dagbundle import DagBundleModel
from airflow.models.dagrun import DagRun
from airflow.models.taskinstance import TaskInstance as TI
from airflow.utils.state import DagRunState
from airflow.utils.types import DagRunTriggeredByType, DagRunType
from sqlalchemy import event, select, update

pytestmark = pytest.mark.usefixtures("clear_db")

BUNDLE = "memseries-decisions"
UTC = datetime.UTC
FROZEN_NOW = datetime.datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
RUN_ID = "manual__decisions"


def _noop(*args):
    return None


def _noop_callback(context):
    return None


def _write_dag(session, dag_id: str, n_mapped: int, *, with_callbacks: bool = False):
    """start >> mapped[n] >> (after_all_success, after_all_done, after_one_failed), serialized for real."""
    from airflow.dag_processing.collection import update_dag_parsing_results_in_db
    from airflow.providers.standard.operators.empty import EmptyOperator
    from airflow.providers.standard.operators.python import PythonOperator
    from airflow.sdk import DAG
    from airflow.serialization.serialized_objects import LazyDeserializedDAG

    if session.get(DagBundleModel, BUNDLE) is None:
        session.add(DagBundleModel(name=BUNDLE))
        session.flush()
    callbacks = {"on_success_callback": _noop_callback, "on_failure_callback": _noop_callback}
    with DAG(
        dag_id,
        schedule=None,
        start_date=FROZEN_NOW - datetime.timedelta(days=30),
        **(callbacks if with_callbacks else {}),
    ) as dag:
        start = EmptyOperator(task_id="start")
        mapped = PythonOperator.partial(task_id="mapped", python_callable=_noop).expand(
            op_args=[[i] for i in range(n_mapped)]
        )
        start >> mapped
        mapped >> EmptyOperator(task_id="after_all_success")
        mapped >> EmptyOperator(task_id="after_all_done", trigger_rule="all_done")
        mapped >> EmptyOperator(task_id="after_one_failed", trigger_rule="one_failed")
    errors: dict = {}
    update_dag_parsing_results_in_db(
        BUNDLE, None, [LazyDeserializedDAG.from_dag(dag)], errors, None, set(), session=session
    )
    assert not errors, errors
    # a DAG callback request names the DAG file; the dag-processor sets it when it parses a real file
    session.execute(
        update(DagModel)
        .where(DagModel.dag_id == dag_id)
        .values(is_paused=False, relative_fileloc=f"{dag_id}.py")
    )
    session.commit()


def _create_run(session, dag_id: str) -> None:
    from airflow.models.dagbag import DBDagBag

    sdag = DBDagBag().get_latest_version_of_dag(dag_id, session=session)
    sdag.create_dagrun(
        run_id=RUN_ID,
        logical_date=FROZEN_NOW - datetime.timedelta(days=1),
        data_interval=(FROZEN_NOW - datetime.timedelta(days=1), FROZEN_NOW - datetime.timedelta(days=1)),
        run_after=FROZEN_NOW - datetime.timedelta(days=1),
        run_type=DagRunType.MANUAL,
        triggered_by=DagRunTriggeredByType.TEST,
        state=DagRunState.RUNNING,
        session=session,
    )
    session.commit()


def _set(session, dag_id: str, task_id: str, state, map_indexes=None, *, end_minute: int | None = None):
    stmt = update(TI).where(TI.dag_id == dag_id, TI.run_id == RUN_ID, TI.task_id == task_id)
    if map_indexes is not None:
        stmt = stmt.where(TI.map_index.in_(list(map_indexes)))
    values: dict = {"state": state}
    if end_minute is not None:
        values["start_date"] = FROZEN_NOW - datetime.timedelta(hours=1)
        values["end_date"] = FROZEN_NOW - datetime.timedelta(minutes=60 - end_minute)
    session.execute(stmt.values(**values))
    session.commit()


def _states(session, dag_id: str) -> dict:
    """Every TI of the run as (task_id, map_index) -> state, plus the run's state."""
    rows = session.execute(
        select(TI.task_id, TI.map_index, TI.state).where(TI.dag_id == dag_id, TI.run_id == RUN_ID)
    ).all()
    run_state = session.scalar(select(DagRun.state).where(DagRun.dag_id == dag_id, DagRun.run_id == RUN_ID))
    return {
        "run": getattr(run_state, "value", run_state),
        "tis": {(t, m): getattr(s, "value", s) for t, m, s in rows},
    }


def _scheduling_pass(session, dag_id: str):
    """What the scheduler does for the run in one loop (execute_callbacks=False), then commit."""
    from airflow.models.dagbag import DBDagBag

    session.expunge_all()
    dr = session.scalar(select(DagRun).where(DagRun.dag_id == dag_id, DagRun.run_id == RUN_ID))
    dr.dag = DBDagBag().get_dag_for_run(dag_run=dr, session=session)
    schedulable, callback = dr.update_state(session=session, execute_callbacks=False)
    result = {
        "schedulable": sorted((ti.task_id, ti.map_index) for ti in schedulable),
        "callback": None,
    }
    if callback is not None:
        last_ti = callback.context_from_server.last_ti
        result["callback"] = {
            "is_failure": callback.is_failure_callback,
            "msg": callback.msg,
            "last_ti": None if last_ti is None else (last_ti.task_id, last_ti.map_index),
        }
    session.commit()
    return result


@pytest.fixture
def frozen(session):
    from airflow.utils.db import synchronize_log_template

    synchronize_log_template(session=session)  # clear_db empties log_template; create_dagrun needs it
    session.commit()
    with time_machine.travel(FROZEN_NOW, tick=False) as traveller:
        yield traveller


def test_running_run_decisions_match_332(session, frozen):
    """A mostly finished mapped task with one failure and one still running: same decisions as 3.3.2."""
    dag_id = "decide_running"
    _write_dag(session, dag_id, 8)
    _create_run(session, dag_id)
    _set(session, dag_id, "start", "success", end_minute=1)
    _set(session, dag_id, "mapped", "success", range(6), end_minute=5)
    _set(session, dag_id, "mapped", "failed", [6], end_minute=6)
    _set(session, dag_id, "mapped", "running", [7])

    result = _scheduling_pass(session, dag_id)

    assert result == {"schedulable": [("after_one_failed", -1)], "callback": None}
    expected = {("start", -1): "success", ("after_all_success", -1): "upstream_failed"}
    expected |= {("mapped", i): "success" for i in range(6)}
    expected |= {("mapped", 6): "failed", ("mapped", 7): "running"}
    expected |= {("after_all_done", -1): None, ("after_one_failed", -1): None}
    assert _states(session, dag_id) == {"run": "running", "tis": expected}


def test_success_callback_names_last_finished_ti(session, frozen):
    dag_id = "decide_success"
    _write_dag(session, dag_id, 10, with_callbacks=True)
    _create_run(session, dag_id)
    _set(session, dag_id, "start", "success", end_minute=1)
    _set(session, dag_id, "mapped", "success", end_minute=10)
    _set(session, dag_id, "after_all_success", "success", end_minute=20)
    _set(session, dag_id, "after_all_done", "success", end_minute=21)
    _set(session, dag_id, "after_one_failed", "skipped", end_minute=22)
    _set(session, dag_id, "mapped", "success", [7], end_minute=40)  # the last success to end

    result = _scheduling_pass(session, dag_id)

    assert result == {
        "schedulable": [],
        "callback": {"is_failure": False, "msg": "success", "last_ti": ("mapped", 7)},
    }
    assert _states(session, dag_id)["run"] == "success"


def test_failure_callback_names_last_failed_ti(session, frozen):
    dag_id = "decide_failure"
    _write_dag(session, dag_id, 10, with_callbacks=True)
    _create_run(session, dag_id)
    _set(session, dag_id, "start", "success", end_minute=1)
    _set(session, dag_id, "mapped", "success", end_minute=10)
    _set(session, dag_id, "mapped", "failed", [2], end_minute=11)
    _set(session, dag_id, "mapped", "failed", [5], end_minute=12)  # the last failure to end
    _set(session, dag_id, "after_all_success", "upstream_failed")
    _set(session, dag_id, "after_all_done", "failed", end_minute=3)
    _set(session, dag_id, "after_one_failed", "success", end_minute=13)

    result = _scheduling_pass(session, dag_id)

    assert result == {
        "schedulable": [],
        "callback": {"is_failure": True, "msg": "task_failure", "last_ti": ("mapped", 5)},
    }
    assert _states(session, dag_id)["run"] == "failed"


def test_finished_ti_of_removed_task_is_marked_removed(session, frozen):
    dag_id = "decide_removed"
    _write_dag(session, dag_id, 3)
    _create_run(session, dag_id)
    _set(session, dag_id, "start", "success", end_minute=1)
    # a finished TI of a task the DAG no longer has (a copy of "start" under another task_id)
    from uuid6 import uuid7

    row = dict(
        session.execute(select(TI.__table__).where(TI.dag_id == dag_id, TI.task_id == "start"))
        .mappings()
        .one()
    )
    row.update(id=uuid7(), task_id="gone")
    session.execute(TI.__table__.insert().values(**row))
    session.commit()

    _scheduling_pass(session, dag_id)

    tis = _states(session, dag_id)["tis"]
    assert tis[("gone", -1)] == "removed"
    assert tis[("start", -1)] == "success"


class _TILoads:
    def __init__(self):
        self.count = 0

    def _on_load(self, target, context):
        self.count += 1

    def __enter__(self):
        event.listen(TI, "load", self._on_load)
        return self

    def __exit__(self, *exc):
        event.remove(TI, "load", self._on_load)


def test_finished_tis_are_not_loaded_as_orm_objects(session, frozen):
    """TaskInstances loaded and held by the decision stay the same with 40 or 400 finished mapped TIs."""
    counts = {}
    for n in (40, 400):
        dag_id = f"decide_count_{n}"
        _write_dag(session, dag_id, n)
        _create_run(session, dag_id)
        _set(session, dag_id, "start", "success", end_minute=1)
        _set(session, dag_id, "mapped", "success", range(n - 1), end_minute=5)
        _set(session, dag_id, "mapped", "running", [n - 1])
        session.expunge_all()
        from airflow.models.dagbag import DBDagBag

        dr = session.scalar(select(DagRun).where(DagRun.dag_id == dag_id, DagRun.run_id == RUN_ID))
        dr.dag = DBDagBag().get_dag_for_run(dag_run=dr, session=session)
        with _TILoads() as loads:
            info = dr.task_instance_scheduling_decisions(session=session)
        held = sum(1 for obj in session.identity_map.values() if isinstance(obj, TI))
        counts[n] = {
            "loaded": loads.count,
            "held": held,
            "finished": len(info.finished_tis),
            "unfinished": sorted((t.task_id, t.map_index) for t in info.unfinished_tis),
        }
        del info
        session.rollback()
        session.expunge_all()

    for n, c in counts.items():
        assert c["finished"] == n  # start + n-1 mapped
        assert c["unfinished"] == [
            ("after_all_done", -1),
            ("after_all_success", -1),
            ("after_one_failed", -1),
            ("mapped", n - 1),
        ]
    # the four unfinished TIs only, whatever the number of finished ones
    assert (counts[40]["loaded"], counts[40]["held"]) == (4, 4)
    assert (counts[400]["loaded"], counts[400]["held"]) == (4, 4)
