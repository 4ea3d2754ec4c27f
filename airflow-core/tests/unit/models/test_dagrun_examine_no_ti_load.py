"""DagRun.get_running_dag_runs_to_examine must not load the runs' TaskInstances (patch 0003, PR #60956).

On 3.1.3 the query joinedloads ``DagRun.task_instances``, so every scheduler loop pulls every TI of up to
``max_dagruns_per_loop_to_schedule`` running runs into the session. These tests check, with SQLAlchemy's
inspection (not timing), that after the query no TaskInstance is in the session and the relationship is
unloaded, and that everything else about the query (paused/stale exclusion, ordering, limit, row locks)
is unchanged.
"""

from __future__ import annotations

import datetime

import pytest
import time_machine
from airflow.models.dag import DagModel
from airflow.models.dagbundle import DagBundleModel
from airflow.models.dagrun import DagRun
from airflow.models.taskinstance import TaskInstance
from airflow.utils.state import DagRunState
from airflow.utils.types import DagRunTriggeredByType, DagRunType
from sqlalchemy import event, inspect, select, update

pytestmark = pytest.mark.usefixtures("clear_db")

BUNDLE = "memseries-examine"
# Frozen "now" of the test: well in the past, so that runs created "now" satisfy the query's
# ``run_after <= now()`` (evaluated by the database, which time-machine does not move).
FROZEN_NOW = datetime.datetime(2026, 3, 1, 12, 0, tzinfo=datetime.timezone.utc)


def _write_dag(session, dag_id: str, task_ids: list[str]) -> None:
    """Serialize a real DAG into the metadata DB exactly like the dag-processor does."""
    from airflow.dag_processing.collection import update_dag_parsing_results_in_db
    from airflow.providers.standard.operators.empty import EmptyOperator
    from airflow.sdk import DAG
    from airflow.serialization.serialized_objects import LazyDeserializedDAG

    if session.get(DagBundleModel, BUNDLE) is None:
        session.add(DagBundleModel(name=BUNDLE))
        session.flush()
    with DAG(dag_id, schedule=None, start_date=FROZEN_NOW - datetime.timedelta(days=30)) as dag:
        for task_id in task_ids:
            EmptyOperator(task_id=task_id)
    errors: dict = {}
    update_dag_parsing_results_in_db(
        BUNDLE, None, [LazyDeserializedDAG.from_dag(dag)], errors, None, set(), session=session
    )
    assert not errors, errors
    session.execute(update(DagModel).where(DagModel.dag_id == dag_id).values(is_paused=False))
    session.commit()


def _create_runs(session, dag_id: str, count: int, *, start: int = 0) -> list[str]:
    from airflow.models.dagbag import DBDagBag

    sdag = DBDagBag().get_latest_version_of_dag(dag_id, session=session)
    run_ids = []
    for i in range(start, start + count):
        logical_date = FROZEN_NOW - datetime.timedelta(days=i + 1)
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


def _tis_in_session(session) -> list[TaskInstance]:
    return [obj for obj in session.identity_map.values() if isinstance(obj, TaskInstance)]


@pytest.fixture
def frozen(session):
    from airflow.utils.db import synchronize_log_template

    # clear_db empties log_template too; create_dagrun needs its row (written by `airflow db migrate`).
    synchronize_log_template(session=session)
    session.commit()
    with time_machine.travel(FROZEN_NOW, tick=False) as traveller:
        yield traveller


def test_examine_does_not_load_task_instances(session, frozen):
    _write_dag(session, "examine_a", [f"t{i}" for i in range(10)])
    _write_dag(session, "examine_b", [f"t{i}" for i in range(7)])
    _create_runs(session, "examine_a", 3)
    _create_runs(session, "examine_b", 2)
    assert session.scalar(select(TaskInstance).limit(1)) is not None
    session.expunge_all()

    dag_runs = list(DagRun.get_running_dag_runs_to_examine(session=session))

    assert len(dag_runs) == 5
    for dr in dag_runs:
        assert "task_instances" in inspect(dr).unloaded, dr
    assert _tis_in_session(session) == []


def test_task_instances_still_readable_lazily(session, frozen):
    _write_dag(session, "examine_lazy", ["a", "b", "c"])
    _create_runs(session, "examine_lazy", 2)

    dag_runs = list(DagRun.get_running_dag_runs_to_examine(session=session))
    assert _tis_in_session(session) == []

    by_run = {dr.run_id: sorted(ti.task_id for ti in dr.task_instances) for dr in dag_runs}
    assert by_run == {dr.run_id: ["a", "b", "c"] for dr in dag_runs}
    assert len(_tis_in_session(session)) == 6


def test_examine_statement_loads_no_task_instance_columns(session, frozen):
    """The examine SELECT itself must not join task_instance (the joinedload did)."""
    _write_dag(session, "examine_sql", ["a", "b"])
    _create_runs(session, "examine_sql", 2)
    statements: list[str] = []

    def _capture(conn, cursor, statement, parameters, context, executemany):
        statements.append(statement)

    engine = session.get_bind()
    event.listen(engine, "before_cursor_execute", _capture)
    try:
        dag_runs = list(DagRun.get_running_dag_runs_to_examine(session=session))
    finally:
        event.remove(engine, "before_cursor_execute", _capture)
    assert len(dag_runs) == 2
    examine = [s for s in statements if "FROM dag_run" in s]
    assert len(examine) == 1, statements
    assert "task_instance" not in examine[0].lower()


def test_examine_query_behaviour_unchanged(session, frozen, backend):
    """Paused and stale DAGs are excluded, order and limit hold, rows are locked where the DB can."""
    _write_dag(session, "examine_ok", ["a"])
    _write_dag(session, "examine_paused", ["a"])
    _write_dag(session, "examine_stale", ["a"])
    _create_runs(session, "examine_ok", 4)
    _create_runs(session, "examine_paused", 1)
    _create_runs(session, "examine_stale", 1)
    session.execute(update(DagModel).where(DagModel.dag_id == "examine_paused").values(is_paused=True))
    session.execute(update(DagModel).where(DagModel.dag_id == "examine_stale").values(is_stale=True))
    # Two runs were already looked at: they come after the never-examined ones (NULLs first).
    session.execute(
        update(DagRun)
        .where(DagRun.run_id == "manual__examine_ok_0")
        .values(last_scheduling_decision=FROZEN_NOW - datetime.timedelta(minutes=1))
    )
    session.execute(
        update(DagRun)
        .where(DagRun.run_id == "manual__examine_ok_1")
        .values(last_scheduling_decision=FROZEN_NOW - datetime.timedelta(minutes=2))
    )
    session.commit()

    statements: list[str] = []

    def _capture(conn, cursor, statement, parameters, context, executemany):
        statements.append(statement)

    engine = session.get_bind()
    event.listen(engine, "before_cursor_execute", _capture)
    try:
        run_ids = [dr.run_id for dr in DagRun.get_running_dag_runs_to_examine(session=session)]
    finally:
        event.remove(engine, "before_cursor_execute", _capture)

    # never examined (NULL last_scheduling_decision) first, oldest run_after first; then by decision time
    assert run_ids == [
        "manual__examine_ok_3",
        "manual__examine_ok_2",
        "manual__examine_ok_1",
        "manual__examine_ok_0",
    ]
    if backend == "postgres":
        assert "UPDATE OF dag_run SKIP LOCKED" in statements[-1]

    session.rollback()
    original_limit = DagRun.DEFAULT_DAGRUNS_TO_EXAMINE
    DagRun.DEFAULT_DAGRUNS_TO_EXAMINE = 2
    try:
        limited = [dr.run_id for dr in DagRun.get_running_dag_runs_to_examine(session=session)]
    finally:
        DagRun.DEFAULT_DAGRUNS_TO_EXAMINE = original_limit
    assert limited == ["manual__examine_ok_3", "manual__examine_ok_2"]
    assert _tis_in_session(session) == []


def test_examine_statements_do_not_grow_with_task_instances(session, frozen):
    """One SELECT for the examine, whatever the number of TIs (rows fetched stay one per run)."""
    counts = {}
    for n_tasks in (2, 40):
        dag_id = f"examine_grow_{n_tasks}"
        _write_dag(session, dag_id, [f"t{i}" for i in range(n_tasks)])
        _create_runs(session, dag_id, 3)
        session.execute(update(DagModel).where(DagModel.dag_id != dag_id).values(is_paused=True))
        session.commit()
        session.expunge_all()

        statements = 0

        def _count(conn, cursor, statement, parameters, context, executemany):
            nonlocal statements
            statements += 1

        engine = session.get_bind()
        event.listen(engine, "before_cursor_execute", _count)
        try:
            dag_runs = list(DagRun.get_running_dag_runs_to_examine(session=session))
        finally:
            event.remove(engine, "before_cursor_execute", _count)
        # dag_runs stays referenced here: the identity map is weak, TIs would vanish with their runs
        counts[n_tasks] = (statements, len(dag_runs), len(_tis_in_session(session)))
        del dag_runs
        session.rollback()
        session.expunge_all()

    assert counts[2] == counts[40] == (1, 3, 0)
