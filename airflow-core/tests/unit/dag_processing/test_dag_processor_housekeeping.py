"""3.3.2 series: the parsing loop's metadata-DB housekeeping at most once a second (patch 0016).

The real ``DagFileProcessorManager`` parses a handful of DAG files back to back with real parsing processes; its
loop then goes round on every event of every parsing process. The housekeeping methods (public, meant to be
overridden) are counted in a subclass and compared with the seconds the run took.
"""

from __future__ import annotations

import gc
import signal
import time
from pathlib import Path

import pytest

DAG = """
from airflow.sdk import DAG
from airflow.providers.standard.operators.empty import EmptyOperator

with DAG("housekeeping_{n}", schedule=None):
    EmptyOperator(task_id="t")
"""

FILES = 6


@pytest.fixture
def dags_folder(airflow_home, clear_db):
    folder = Path(airflow_home) / "dags"
    for path in folder.iterdir():
        path.unlink()
    for n in range(FILES):
        (folder / f"housekeeping_{n}.py").write_text(DAG.format(n=n))
    yield folder
    for path in folder.iterdir():
        path.unlink()


def _run(manager_class, max_runs: int):
    class _UntilParsed(manager_class):
        # max_runs_reached() holds as soon as the loop has gone round max_runs times with no file seen yet.
        def max_runs_reached(self):
            return len(self._file_stats) >= FILES and super().max_runs_reached()

    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL", "0")
        mp.setenv("AIRFLOW__DAG_PROCESSOR__PRINT_STATS_INTERVAL", "0")
        mp.setenv("_AIRFLOW_PROCESS_CONTEXT", "")
        gc.unfreeze()
        try:
            manager = _UntilParsed(max_runs=max_runs)
            started = time.monotonic()
            manager.run()
            return manager, time.monotonic() - started
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
            gc.unfreeze()


def test_housekeeping_queries_at_most_once_a_second_while_parsing(dags_folder):
    from airflow.dag_processing.manager import DagFileProcessorManager

    calls = {"claim_priority_files": 0, "fetch_callbacks": 0, "purge_inactive_dag_warnings": 0}

    class _Counting(DagFileProcessorManager):
        def claim_priority_files(self):
            calls["claim_priority_files"] += 1
            return super().claim_priority_files()

        def fetch_callbacks(self):
            calls["fetch_callbacks"] += 1
            return super().fetch_callbacks()

        def purge_inactive_dag_warnings(self):
            calls["purge_inactive_dag_warnings"] += 1
            return super().purge_inactive_dag_warnings()

    manager, elapsed = _run(_Counting, max_runs=3)

    loops = manager._num_run
    # Without parsing processes sending events the loop goes round once a second and nothing tells.
    assert loops > elapsed + 5, f"only {loops} loops in {elapsed:.1f} s: the loop never went round faster"
    allowed = int(elapsed) + 2  # once a second, the first loop included, however slow this machine is
    too_often = {name: n for name, n in calls.items() if n > allowed}
    assert not too_often, (
        f"housekeeping queries ran on every loop ({loops} loops in {elapsed:.1f} s), "
        f"not at most once a second ({allowed}): {too_often}"
    )


def test_a_full_batch_of_callbacks_is_followed_by_another_fetch_at_once(dags_folder):
    from airflow.dag_processing.manager import DagFileProcessorManager

    fetched_in_loop: list[int] = []

    class _Backlog(DagFileProcessorManager):
        # Three full batches waiting, then none: each full batch must be followed by a fetch in the next loop,
        # as every loop fetched before, not a second later.
        def fetch_callbacks(self):
            fetched_in_loop.append(self._num_run)
            full = len(fetched_in_loop) <= 3
            return [object()] * self.max_callbacks_per_loop if full else []

        def _add_callback_to_queue(self, request):
            pass

    _run(_Backlog, max_runs=2)

    assert fetched_in_loop[:4] == [0, 1, 2, 3], fetched_in_loop
