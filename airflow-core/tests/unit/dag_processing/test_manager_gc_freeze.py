"""The DAG processor manager freezes its heap before forking parse processes (patch 0005).

Everything here runs the real ``DagFileProcessorManager`` in the test process, against the session's metadata
database, with a real DAG file that real forked parse processes parse.
"""

from __future__ import annotations

import gc
import json
import signal
import sys
import textwrap
import weakref
from pathlib import Path

import pytest

PRE_IMPORTED = "airflow.providers.standard.sensors.weekday"  # imported by no other test of this module

SIMPLE_DAG = """
from airflow.sdk import DAG
from airflow.providers.standard.operators.empty import EmptyOperator

with DAG("{dag_id}", schedule=None):
    EmptyOperator(task_id="t")
"""

BALLAST = 300_000  # GC-tracked lists the manager holds in test_full_collection_in_parse_process_stays_cheap

# Measures, inside the parse process, what one full collection walks (the tracked objects outside the
# permanent generation) and what it costs in private memory (USS growth).
PROBE_DAG = """
import gc, json, os
import psutil
from airflow.sdk import DAG
from airflow.providers.standard.operators.empty import EmptyOperator

with DAG("gc_probe", schedule=None):
    EmptyOperator(task_id="t")

_proc = psutil.Process()
_uss0 = _proc.memory_full_info().uss
_walked = len(gc.get_objects())  # what a full collection walks: every tracked object not frozen
gc.collect()
_uss1 = _proc.memory_full_info().uss
with open({out!r}, "a") as _f:
    _f.write(json.dumps({{
        "uss_growth": _uss1 - _uss0, "walked": _walked, "frozen": gc.get_freeze_count(), "pid": os.getpid()
    }}) + "\\n")
"""


@pytest.fixture
def dags_folder(airflow_home, clear_db, monkeypatch):
    """The session's (default bundle's) DAG folder, emptied; quick re-parsing; signals and gc restored."""
    folder = Path(airflow_home) / "dags"
    for path in folder.iterdir():
        path.unlink()
    monkeypatch.setenv("AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL", "0")
    monkeypatch.setenv("AIRFLOW__DAG_PROCESSOR__PRINT_STATS_INTERVAL", "0")
    monkeypatch.setenv("_AIRFLOW_PROCESS_CONTEXT", "")  # the manager sets "server"; restore afterwards
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)}
    gc.unfreeze()
    try:
        yield folder
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        gc.unfreeze()
        gc.enable()
        for path in folder.iterdir():
            path.unlink()


def _run_manager(max_runs: int = 1, **kwargs):
    from airflow.dag_processing.manager import DagFileProcessorManager

    manager = DagFileProcessorManager(max_runs=max_runs, **kwargs)
    manager.run()
    return manager


def test_heap_is_frozen_once_manager_starts(dags_folder):
    (dags_folder / "simple.py").write_text(SIMPLE_DAG.format(dag_id="frozen_simple"))
    assert gc.get_freeze_count() == 0
    tracked_before = len(gc.get_objects())

    manager = _run_manager()

    # (nearly) the whole pre-existing heap went to the permanent generation
    assert gc.get_freeze_count() > tracked_before // 2
    assert manager._file_stats  # and the file really was parsed
    assert sum(stat.num_dags for stat in manager._file_stats.values()) == 1


def test_module_pre_imported_later_is_frozen_and_freezes_are_bounded(dags_folder):
    # The DAG imports an airflow module the manager has not imported yet: `parsing_pre_import_modules`
    # imports it in the manager right before the fork. It must be frozen too.
    sys.modules.pop(PRE_IMPORTED, None)
    (dags_folder / "pre_import.py").write_text(
        SIMPLE_DAG.format(dag_id="frozen_pre_import") + f"\nimport {PRE_IMPORTED}  # noqa: F401\n"
    )
    parses = 5
    manager = _run_manager(max_runs=parses)

    module = sys.modules[PRE_IMPORTED]
    tracked_ids = {id(obj) for obj in gc.get_objects()}  # frozen objects are in no generation
    assert gc.is_tracked(vars(module))
    assert id(vars(module)) not in tracked_ids, "pre-imported module's namespace is not frozen"
    assert id(module.DayOfWeekSensor) not in tracked_ids

    stat = next(iter(manager._file_stats.values()))
    assert stat.run_count == parses
    # one freeze at start, then only when new modules appeared: not one per parse
    freezes = manager._heap_freezer.freezes
    assert 2 <= freezes < parses, freezes


def test_garbage_is_not_frozen(dags_folder):
    class Node:
        pass

    gc.disable()  # only explicit collections from here on
    node = Node()
    node.cycle = node  # unreachable after `del`, reclaimable only by the cycle collector
    ref = weakref.ref(node)
    del node
    assert ref() is not None

    (dags_folder / "simple.py").write_text(SIMPLE_DAG.format(dag_id="garbage_simple"))
    _run_manager()

    # The manager collected before freezing: the garbage cycle is gone (frozen it would live forever).
    assert ref() is None
    assert gc.get_freeze_count() > 0


@pytest.mark.parametrize("ballast_when", ["before_start", "between_parses"])
def test_full_collection_in_parse_process_stays_cheap(dags_folder, tmp_path, ballast_when):
    out = tmp_path / "probe.jsonl"
    # Give the manager a heap worth sharing (tracked containers), created either before it starts, or
    # while it runs, once two parses are done (from the loop's heartbeat: after the manager's last
    # freeze, like the objects a long-running manager accumulates, with no new module to trigger
    # another freeze). The last parse process must leave both alone.
    ballast: list = []
    managers: list = []
    freezes_at_ballast: list = []

    def grow():
        if ballast or not managers:
            return
        stats = managers[0]._file_stats.values()
        if ballast_when == "before_start" or any(s.run_count >= 2 for s in stats):
            ballast.extend([i] for i in range(BALLAST))  # lists: always GC-tracked
            freezes_at_ballast.append(getattr(getattr(managers[0], "_heap_freezer", None), "freezes", None))

    (dags_folder / "probe.py").write_text(textwrap.dedent(PROBE_DAG.format(out=str(out))))
    from airflow.dag_processing.manager import DagFileProcessorManager

    manager = DagFileProcessorManager(max_runs=3, heartbeat=grow)
    managers.append(manager)
    grow()
    manager.run()

    lines = out.read_text().splitlines()
    assert len(lines) == 3 and ballast
    probe = json.loads(lines[-1])
    ballast.clear()
    if ballast_when == "between_parses" and freezes_at_ballast[0] is not None:
        # the manager did not freeze the ballast: only the parse process itself can keep it out of reach
        assert manager._heap_freezer.freezes == freezes_at_ballast[0]
    # Unfrozen, the child's collection walks (and writes to the header of) every inherited object, the
    # ballast included, and un-shares well over 20 MiB here; frozen, it only walks the child's own objects.
    assert probe["frozen"] > BALLAST, probe
    assert probe["walked"] < BALLAST // 2, probe
    assert probe["uss_growth"] < 8 * 1024 * 1024, probe
