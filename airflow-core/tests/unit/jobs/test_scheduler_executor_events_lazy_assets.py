"""process_executor_events loads a run's consumed asset events only where they are read (3.3.2 patch 0005).

Airflow 3.3.2's ``SchedulerJobRunner.process_executor_events`` selects the finished TIs with their run's
``consumed_asset_events`` (and each event's asset and aliases) eager-loaded, for every executor event, although
only the task failure-callback and e-mail paths read them. These tests check, on a run that consumed events:

- a SUCCESS event: the TI is left as 3.3.2 leaves it and no AssetEvent is materialised, whatever the number of
  events (fails on 3.3.2, which loads every one);
- a task that died without reporting (executor says failed, the TI still running): the TaskCallbackRequest and
  the EmailRequest sent to the executor carry exactly the run's consumed events (ids, assets, extras, aliases,
  written here), and the TI ends in the same state as on 3.3.2 (passes on both builds).
"""

from __future__ import annotations

import datetime
from unittest import mock

import pytest
from airflow.models.asset import (
    AssetAliasModel,
    AssetEvent,
    AssetModel,
    asset_alias_asset_event_association_table,
    association_table,
)
from airflow.models.dag import DagModel
from airflow.models.dagbundle import DagBundleModel
from airflow.models.dagrun import DagRun
from airflow.models.taskinstance import TaskInstance as TI
from airflow.utils.state import DagRunState, TaskInstanceState
from airflow.utils.types import DagRunTriggeredByType, DagRunType
from sqlalchemy import event, insert, select, update

pytestmark = [
    pytest.mark.usefixtures("clear_db"),
    # the e-mail path under test is 3.3.2's task-level email, which 3.3.2 deprecates
    pytest.mark.filterwarnings("ignore:Setting email"),
]

BUNDLE = "memseries-executor-events"
UTC = datetime.UTC
T0 = datetime.datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
JOB_ID = 4242


def _on_failure(context):
    return None


@pytest.fixture
def prepared(session):
    from airflow.utils.db import synchronize_log_template

    synchronize_log_template(session=session)  # clear_db empties log_template; create_dagrun needs it
    session.commit()


def _write_dag(session, dag_id: str) -> None:
    from airflow.dag_processing.collection import update_dag_parsing_results_in_db
    from airflow.providers.standard.operators.empty import EmptyOperator
    from airflow.sdk import DAG, Asset

    if session.get(DagBundleModel, BUNDLE) is None:
        session.add(DagBundleModel(name=BUNDLE))
        session.flush()
    with DAG(
        dag_id, schedule=[Asset("memseries://events")], start_date=T0 - datetime.timedelta(days=30)
    ) as dag:
        EmptyOperator(task_id="plain")
        EmptyOperator(
            task_id="watched",
            on_failure_callback=_on_failure,
            email="ops@example.com",
            email_on_failure=True,
            retries=0,
        )
    from airflow.serialization.serialized_objects import LazyDeserializedDAG

    errors: dict = {}
    update_dag_parsing_results_in_db(
        BUNDLE, None, [LazyDeserializedDAG.from_dag(dag)], errors, None, set(), session=session
    )
    assert not errors, errors
    session.execute(
        update(DagModel)
        .where(DagModel.dag_id == dag_id)
        .values(is_paused=False, relative_fileloc=f"{dag_id}.py")
    )
    session.commit()


def _run_with_events(session, dag_id: str, n_events: int) -> dict:
    """An asset-triggered run that consumed n_events (every third also reached through an alias)."""
    from airflow.models.dagbag import DBDagBag

    _write_dag(session, dag_id)
    asset_id = session.scalar(select(AssetModel.id).where(AssetModel.name == "memseries://events"))
    session.add(AssetAliasModel(name=f"{dag_id}-alias", group="asset"))
    session.flush()
    alias_id = session.scalar(select(AssetAliasModel.id).where(AssetAliasModel.name == f"{dag_id}-alias"))
    sdag = DBDagBag().get_latest_version_of_dag(dag_id, session=session)
    dr = sdag.create_dagrun(
        run_id=f"asset_triggered__{dag_id}",
        logical_date=None,
        data_interval=None,
        run_after=T0,
        run_type=DagRunType.ASSET_TRIGGERED,
        triggered_by=DagRunTriggeredByType.ASSET,
        state=DagRunState.RUNNING,
        session=session,
    )
    session.flush()
    rows = [
        {
            "asset_id": asset_id,
            "extra": {"n": i},
            "timestamp": T0 - datetime.timedelta(seconds=n_events - i),
            "source_map_index": -1,
        }
        for i in range(n_events)
    ]
    if rows:
        session.execute(insert(AssetEvent), rows)
    event_ids = list(
        session.scalars(select(AssetEvent.id).where(AssetEvent.asset_id == asset_id).order_by(AssetEvent.id))
    )
    if event_ids:
        session.execute(insert(association_table), [{"dag_run_id": dr.id, "event_id": e} for e in event_ids])
        aliased = event_ids[::3]
        session.execute(
            insert(asset_alias_asset_event_association_table),
            [{"alias_id": alias_id, "event_id": e} for e in aliased],
        )
    else:
        aliased = []
    session.execute(
        update(TI)
        .where(TI.dag_id == dag_id)
        .values(state=TaskInstanceState.RUNNING, try_number=1, queued_by_job_id=JOB_ID, start_date=T0)
    )
    session.commit()
    session.expunge_all()
    return {"event_ids": event_ids, "aliased": set(aliased), "alias": f"{dag_id}-alias"}


def _executor(dag_id: str, task_id: str, state):
    from airflow.models.taskinstancekey import TaskInstanceKey

    key = TaskInstanceKey(dag_id, task_id, f"asset_triggered__{dag_id}", 1, -1)
    executor = mock.MagicMock(name="executor")
    buffer = {key: (state, None)}
    executor.get_event_buffer.return_value = buffer
    executor.has_task.return_value = False
    executor.__str__.return_value = "MockExecutor"
    return executor


class _EventLoads:
    def __init__(self):
        self.count = 0

    def _on_load(self, target, context):
        self.count += 1

    def __enter__(self):
        event.listen(AssetEvent, "load", self._on_load)
        return self

    def __exit__(self, *exc):
        event.remove(AssetEvent, "load", self._on_load)


def _process(session, executor) -> int:
    from airflow.jobs.scheduler_job_runner import SchedulerJobRunner

    bag = mock.MagicMock(name="scheduler_dag_bag")
    from airflow.models.dagbag import DBDagBag

    real_bag = DBDagBag()
    bag.get_dag_for_run.side_effect = lambda dag_run, session: real_bag.get_dag_for_run(
        dag_run=dag_run, session=session
    )
    with _EventLoads() as loads:
        SchedulerJobRunner.process_executor_events(
            executor=executor, job_id=JOB_ID, scheduler_dag_bag=bag, session=session
        )
        session.flush()
    session.commit()
    return loads.count


def _ti_state(session, dag_id: str, task_id: str):
    state = session.scalar(select(TI.state).where(TI.dag_id == dag_id, TI.task_id == task_id))
    return getattr(state, "value", state)


@pytest.mark.parametrize("n_events", [30, 300])
def test_success_event_loads_no_asset_event(session, prepared, n_events):
    dag_id = f"lazy_success_{n_events}"
    _run_with_events(session, dag_id, n_events)
    # the task reported its own success through the execution API before the executor's event arrives
    session.execute(update(TI).where(TI.dag_id == dag_id, TI.task_id == "plain").values(state="success"))
    session.commit()
    executor = _executor(dag_id, "plain", TaskInstanceState.SUCCESS)

    loads = _process(session, executor)

    assert executor.send_callback.call_count == 0
    assert executor.get_event_buffer.return_value == {}  # the event was consumed
    assert _ti_state(session, dag_id, "plain") == "success"
    assert _ti_state(session, dag_id, "watched") == "running"
    assert loads == 0


def _events_of(request) -> list[tuple]:
    dag_run = request.context_from_server.dag_run
    return [
        (e.id if hasattr(e, "id") else None, e.asset.uri, e.extra, sorted(a.name for a in e.source_aliases))
        for e in dag_run.consumed_asset_events
    ]


def test_failure_callback_and_email_carry_the_consumed_events(session, prepared):
    dag_id = "lazy_failure"
    run = _run_with_events(session, dag_id, 7)
    executor = _executor(dag_id, "watched", TaskInstanceState.FAILED)

    _process(session, executor)

    requests = [c.args[0] for c in executor.send_callback.call_args_list]
    assert [type(r).__name__ for r in requests] == ["TaskCallbackRequest", "EmailRequest"]
    expected = [
        ("memseries://events/", {"n": i}, [run["alias"]] if event_id in run["aliased"] else [])
        for i, event_id in enumerate(run["event_ids"])
    ]
    for request in requests:
        got = sorted(((uri, extra, aliases) for _, uri, extra, aliases in _events_of(request)), key=repr)
        assert got == sorted(expected, key=repr)
        assert request.ti.task_id == "watched"
    assert requests[0].task_callback_type == TaskInstanceState.FAILED
    assert requests[1].email_type == "failure"
    assert _ti_state(session, dag_id, "watched") == "failed"
    run_state = session.scalar(select(DagRun.state).where(DagRun.dag_id == dag_id))
    assert getattr(run_state, "value", run_state) == "running"
