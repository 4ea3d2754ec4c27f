"""Asset-triggered DAG run creation links its consumed events in the database (3.3.2 patch 0003, #69848).

Airflow 3.3.2's ``SchedulerJobRunner._create_dag_runs_asset_triggered`` (and the partitioned path
``_create_dagruns_for_partitioned_asset_dags``) loads every AssetEvent of the run's window as an ORM object and
extends ``dag_run.consumed_asset_events`` with them: tens of MB at 10k events. The patch links them with one
``INSERT ... SELECT``. These tests check:

- the DB state after run creation (run, linked events, queue rows) equals the expected state written here, which
  is what 3.3.2 produces: same event window (previous asset-triggered run, the DAG's asset reference time when
  catchup is off), events reached through an alias, events outside the window left alone (passes on both builds);
- the run's ``consumed_asset_events`` read afterwards holds exactly those events;
- bounded behaviour, by counts: no AssetEvent is materialised from a row and none is left in the session,
  whatever the number of events (fails on 3.3.2, which loads every one of them).
"""

from __future__ import annotations

import datetime

import pytest
from airflow.models.asset import (
    AssetAliasModel,
    AssetDagRunQueue,
    AssetEvent,
    AssetModel,
    AssetPartitionDagRun,
    DagScheduleAssetReference,
    PartitionedAssetKeyLog,
    asset_alias_asset_event_association_table,
    association_table,
)
from airflow.models.dag import DagModel
from airflow.models.dagbundle import DagBundleModel
from airflow.models.dagrun import DagRun
from airflow.utils.state import DagRunState
from airflow.utils.types import DagRunTriggeredByType, DagRunType
from sqlalchemy import event, insert, select, update

pytestmark = pytest.mark.usefixtures("clear_db")

BUNDLE = "memseries-asset-runs"
UTC = datetime.UTC
T0 = datetime.datetime(2026, 3, 1, 12, 0, tzinfo=UTC)  # the previous asset-triggered run's run_after
T_REF = datetime.datetime(2026, 2, 1, 0, 0, tzinfo=UTC)  # when the DAG started scheduling on its asset
T_TRIGGER = T0 + datetime.timedelta(hours=2)  # the queued asset's created_at: the new run's run_after


@pytest.fixture
def runner(session):
    from airflow.jobs.job import Job
    from airflow.jobs.scheduler_job_runner import SchedulerJobRunner
    from airflow.utils.db import synchronize_log_template

    synchronize_log_template(session=session)  # clear_db empties log_template; create_dagrun needs it
    session.commit()
    return SchedulerJobRunner(job=Job())


def _write_dag(session, dag_id: str, schedule, *, catchup: bool = False) -> None:
    """Serialize a real DAG into the metadata DB the way the dag-processor does (assets, aliases, references)."""
    from airflow.dag_processing.collection import update_dag_parsing_results_in_db
    from airflow.providers.standard.operators.empty import EmptyOperator
    from airflow.sdk import DAG
    from airflow.serialization.serialized_objects import LazyDeserializedDAG

    if session.get(DagBundleModel, BUNDLE) is None:
        session.add(DagBundleModel(name=BUNDLE))
        session.flush()
    with DAG(dag_id, schedule=schedule, start_date=T_REF, catchup=catchup) as dag:
        EmptyOperator(task_id="consume")
    errors: dict = {}
    update_dag_parsing_results_in_db(
        BUNDLE, None, [LazyDeserializedDAG.from_dag(dag)], errors, None, set(), session=session
    )
    assert not errors, errors
    session.execute(update(DagModel).where(DagModel.dag_id == dag_id).values(is_paused=False))
    session.execute(
        update(DagScheduleAssetReference)
        .where(DagScheduleAssetReference.dag_id == dag_id)
        .values(created_at=T_REF)
    )
    session.commit()


def _asset_id(session, uri: str) -> int:
    """The asset named ``uri`` (the dag-processor normalizes the URI itself, the name stays as written)."""
    asset_id = session.scalar(select(AssetModel.id).where(AssetModel.name == uri))
    if asset_id is None:
        session.add(AssetModel(name=uri, uri=uri, group="asset"))
        session.flush()
        asset_id = session.scalar(select(AssetModel.id).where(AssetModel.name == uri))
    return asset_id


def _add_events(session, asset_id: int, timestamps, *, extra=None) -> list[int]:
    """Bulk INSERT of asset events (one statement), returning their ids in timestamp order."""
    rows = [
        {"asset_id": asset_id, "extra": extra or {}, "timestamp": ts, "source_map_index": -1}
        for ts in timestamps
    ]
    session.execute(insert(AssetEvent), rows)
    session.flush()
    return list(
        session.scalars(
            select(AssetEvent.id)
            .where(AssetEvent.asset_id == asset_id, AssetEvent.timestamp.in_(list(timestamps)))
            .order_by(AssetEvent.timestamp, AssetEvent.id)
        )
    )


def _previous_run(session, dag_id: str, run_after: datetime.datetime) -> None:
    from airflow.models.dagbag import DBDagBag

    sdag = DBDagBag().get_latest_version_of_dag(dag_id, session=session)
    sdag.create_dagrun(
        run_id=f"asset_triggered__{run_after.isoformat()}",
        logical_date=None,
        data_interval=None,
        run_after=run_after,
        run_type=DagRunType.ASSET_TRIGGERED,
        triggered_by=DagRunTriggeredByType.ASSET,
        state=DagRunState.SUCCESS,
        session=session,
    )
    session.commit()


def _queue(session, asset_id: int, dag_id: str, created_at: datetime.datetime) -> None:
    session.add(AssetDagRunQueue(asset_id=asset_id, target_dag_id=dag_id, created_at=created_at))
    session.commit()


def _value(v) -> str:
    return getattr(v, "value", v)


def _db_state(session, dag_id: str) -> dict:
    """What run creation leaves in the DB for this DAG, as plain values."""
    runs = session.execute(
        select(DagRun.id, DagRun.run_type, DagRun.run_after, DagRun.state, DagRun.triggered_by)
        .where(DagRun.dag_id == dag_id)
        .order_by(DagRun.run_after)
    ).all()
    links = {
        run_id: sorted(
            session.scalars(
                select(association_table.c.event_id).where(association_table.c.dag_run_id == run_id)
            )
        )
        for run_id, *_ in runs
    }
    return {
        "runs": [(_value(rt), ra, _value(st), _value(tb)) for _, rt, ra, st, tb in runs],
        "links": [links[run_id] for run_id, *_ in runs],
        "queued": session.scalar(
            select(AssetDagRunQueue.asset_id).where(AssetDagRunQueue.target_dag_id == dag_id).limit(1)
        ),
    }


class _EventLoads:
    """AssetEvent ORM objects materialised from rows while active."""

    def __init__(self):
        self.count = 0

    def _on_load(self, target, context):
        self.count += 1

    def __enter__(self):
        event.listen(AssetEvent, "load", self._on_load)
        return self

    def __exit__(self, *exc):
        event.remove(AssetEvent, "load", self._on_load)


def _events_in_session(session) -> int:
    return sum(1 for obj in session.identity_map.values() if isinstance(obj, AssetEvent))


def _create(runner, session, dag_id: str) -> None:
    dag_model = session.get(DagModel, dag_id)
    runner._create_dag_runs_asset_triggered(dag_models=[dag_model], session=session)
    session.flush()


def test_window_and_links_match_332(session, runner, capsys):
    """Previous run floors the window; alias events count; outside-window and unrelated events do not."""
    from airflow.sdk import Asset, AssetAlias

    _write_dag(session, "consumer", Asset("memseries://a") | AssetAlias("memseries-alias"))
    a = _asset_id(session, "memseries://a")
    b = _asset_id(session, "memseries://b")
    _previous_run(session, "consumer", T0)
    hour = datetime.timedelta(hours=1)
    minute = datetime.timedelta(minutes=1)
    before, at_floor, in1, in2, at_trigger, after = _add_events(
        session, a, [T0 - hour, T0, T0 + minute, T0 + hour, T_TRIGGER, T_TRIGGER + minute]
    )
    via_alias, not_scheduled = _add_events(session, b, [T0 + 2 * minute, T0 + 3 * minute])
    alias_id = session.scalar(select(AssetAliasModel.id).where(AssetAliasModel.name == "memseries-alias"))
    session.execute(
        insert(asset_alias_asset_event_association_table).values(alias_id=alias_id, event_id=via_alias)
    )
    _queue(session, a, "consumer", T_TRIGGER)
    capsys.readouterr()

    _create(runner, session, "consumer")
    session.commit()

    # the scheduler's log line still reports the number of events the run consumed
    assert "consumed 4 asset events" in capsys.readouterr().out

    state = _db_state(session, "consumer")
    assert state == {
        "runs": [
            ("asset_triggered", T0, "success", "asset"),
            ("asset_triggered", T_TRIGGER, "queued", "asset"),
        ],
        "links": [[], sorted([in1, in2, at_trigger, via_alias])],
        "queued": None,
    }
    assert {before, at_floor, after, not_scheduled}.isdisjoint(state["links"][1])
    session.expunge_all()
    new_run = session.scalar(select(DagRun).where(DagRun.dag_id == "consumer", DagRun.run_after == T_TRIGGER))
    assert sorted(e.id for e in new_run.consumed_asset_events) == sorted([in1, in2, at_trigger, via_alias])


def test_first_run_floored_at_reference_when_catchup_off(session, runner):
    from airflow.sdk import Asset

    _write_dag(session, "first", [Asset("memseries://first")])
    a = _asset_id(session, "memseries://first")
    day = datetime.timedelta(days=1)
    old, kept1, kept2 = _add_events(session, a, [T_REF - day, T_REF + day, T_TRIGGER])
    _queue(session, a, "first", T_TRIGGER)

    _create(runner, session, "first")
    session.commit()

    assert _db_state(session, "first") == {
        "runs": [("asset_triggered", T_TRIGGER, "queued", "asset")],
        "links": [[kept1, kept2]],
        "queued": None,
    }
    assert old not in _db_state(session, "first")["links"][0]


def test_first_run_takes_backlog_when_catchup_on(session, runner):
    from airflow.sdk import Asset

    _write_dag(session, "catchup", [Asset("memseries://c")], catchup=True)
    a = _asset_id(session, "memseries://c")
    day = datetime.timedelta(days=1)
    ids = _add_events(session, a, [T_REF - 30 * day, T_REF + day, T_TRIGGER])
    _queue(session, a, "catchup", T_TRIGGER)

    _create(runner, session, "catchup")
    session.commit()

    assert _db_state(session, "catchup")["links"] == [sorted(ids)]


def test_run_with_no_events_in_window(session, runner):
    from airflow.sdk import Asset

    _write_dag(session, "empty", [Asset("memseries://e")])
    a = _asset_id(session, "memseries://e")
    _queue(session, a, "empty", T_TRIGGER)

    _create(runner, session, "empty")
    session.commit()

    assert _db_state(session, "empty") == {
        "runs": [("asset_triggered", T_TRIGGER, "queued", "asset")],
        "links": [[]],
        "queued": None,
    }


@pytest.mark.parametrize("n_events", [50, 400])
def test_no_asset_event_loaded_whatever_the_count(session, runner, n_events):
    """Creating the run materialises no AssetEvent and leaves none in the session (3.3.2: one per event)."""
    from airflow.sdk import Asset

    dag_id = f"many_{n_events}"
    _write_dag(session, dag_id, [Asset(f"memseries://many-{n_events}")])
    a = _asset_id(session, f"memseries://many-{n_events}")
    _previous_run(session, dag_id, T0)
    step = datetime.timedelta(seconds=1)
    ids = _add_events(
        session, a, [T0 + (i + 1) * step for i in range(n_events)], extra={"payload": "x" * 200}
    )
    _queue(session, a, dag_id, T_TRIGGER)
    session.expunge_all()

    with _EventLoads() as loads:
        _create(runner, session, dag_id)
        held = _events_in_session(session)
    session.commit()

    assert (loads.count, held) == (0, 0)
    assert _db_state(session, dag_id)["links"] == [[], ids]


def test_partitioned_run_links_its_logged_events(session, runner):
    """The partitioned path links exactly the APDR's logged events, without loading them."""
    from airflow.jobs.scheduler_job_runner import SchedulerJobRunner
    from airflow.sdk import Asset
    from airflow.sdk.definitions.timetables.assets import PartitionedAssetTimetable

    _write_dag(session, "part", PartitionedAssetTimetable(assets=Asset("memseries://p")))
    a = _asset_id(session, "memseries://p")
    mine = _add_events(session, a, [T0, T0 + datetime.timedelta(minutes=1)])
    (other,) = _add_events(session, a, [T0 + datetime.timedelta(minutes=2)])
    apdr = AssetPartitionDagRun(target_dag_id="part", partition_key="2026-03-01")
    other_apdr = AssetPartitionDagRun(target_dag_id="part", partition_key="2026-03-02")
    session.add_all([apdr, other_apdr])
    session.flush()
    for event_id, owner in ((mine[0], apdr), (mine[1], apdr), (other, other_apdr)):
        session.add(
            PartitionedAssetKeyLog(
                asset_id=a,
                asset_event_id=event_id,
                asset_partition_dag_run_id=owner.id,
                source_partition_key=owner.partition_key,
                target_dag_id="part",
                target_partition_key=owner.partition_key,
            )
        )
    session.commit()
    session.expunge_all()

    # Only the linking step is under test: run the real method with the partition evaluation satisfied.
    created = _create_partitioned(runner, session, SchedulerJobRunner)
    session.commit()

    assert created["dag_ids"] == {"part"}
    runs = dict(
        session.execute(
            select(AssetPartitionDagRun.partition_key, AssetPartitionDagRun.created_dag_run_id).where(
                AssetPartitionDagRun.target_dag_id == "part"
            )
        ).all()
    )
    links = {
        key: sorted(
            session.scalars(
                select(association_table.c.event_id).where(association_table.c.dag_run_id == run_id)
            )
        )
        for key, run_id in runs.items()
        if run_id is not None
    }
    assert links == {"2026-03-01": mine, "2026-03-02": [other]}
    assert created["loads"] == (0, 0)


def _create_partitioned(runner, session, runner_cls) -> dict:
    from unittest import mock

    from airflow.timetables.base import compute_rollup_fingerprint

    serdag = runner._get_current_dag(dag_id="part", session=session)
    fingerprint = compute_rollup_fingerprint(serdag.timetable)
    session.execute(update(AssetPartitionDagRun).values(rollup_fingerprint=fingerprint))
    session.commit()
    session.expunge_all()
    with (
        _EventLoads() as loads,
        mock.patch("airflow.assets.evaluation.AssetEvaluator.run", return_value=True),
    ):
        dag_ids = runner._create_dagruns_for_partitioned_asset_dags(session)
        held = _events_in_session(session)
    return {"dag_ids": dag_ids, "loads": (loads.count, held)}
