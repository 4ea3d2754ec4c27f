"""3.3.2 series: per-parse setup done once, before the fork: logging (patch 0013).

A parse process freezes what it inherited first thing (patch 0009), so anything still tracked by the garbage
collector at the end of its DAG file was created in the parse process itself; anything not tracked (and
GC-trackable) was inherited, i.e. built once before the fork. The DAG file below inspects its own process
with that rule and records what it finds; the real ``DagFileProcessorManager`` runs in the test process with
real parse processes (forked from the parse zygote, patch 0011).
"""

from __future__ import annotations

import gc
import json
import signal
from pathlib import Path

import pytest

PROBE = """
import gc as _gc, json as _json, logging as _logging, sys as _sys
from airflow.sdk import DAG
from airflow.providers.standard.operators.empty import EmptyOperator

with DAG("setup_probe", schedule=None):
    EmptyOperator(task_id="t")

from airflow.sdk.execution_time import task_runner as _task_runner
from sqlalchemy.pool import Pool as _Pool

_tracked = {{id(_o) for _o in _gc.get_objects()}}
_comms = _task_runner.SUPERVISOR_COMMS
_handlers = [_h for _l in [_logging.getLogger()] + [
    _logging.getLogger(_n) for _n in list(_logging.root.manager.loggerDict)
] if isinstance(_l, _logging.Logger) for _h in _l.handlers]
with open({out!r}, "a") as _f:
    _f.write(_json.dumps({{
        "body_decoder_built_here": id(_comms.body_decoder) in _tracked,
        "err_decoder_built_here": id(_comms.err_decoder) in _tracked,
        "handlers": len(_handlers),
        "handlers_built_here": sum(id(_h) in _tracked for _h in _handlers),
        "pools_built_here": sum(isinstance(_o, _Pool) for _o in _gc.get_objects()),
    }}) + "\\n")
"""


@pytest.fixture
def probe_run(airflow_home, clear_db, tmp_path):
    folder = Path(airflow_home) / "dags"
    for path in folder.iterdir():
        path.unlink()
    out = tmp_path / "probe.jsonl"
    (folder / "setup_probe.py").write_text(PROBE.format(out=str(out)))
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL", "0")
        mp.setenv("AIRFLOW__DAG_PROCESSOR__PRINT_STATS_INTERVAL", "0")
        mp.setenv("_AIRFLOW_PROCESS_CONTEXT", "")
        mp.delenv("AIRFLOW__DAG_PROCESSOR__PARSE_ZYGOTE", raising=False)
        gc.unfreeze()
        try:
            from airflow.dag_processing.manager import DagFileProcessorManager

            class _UntilParsed(DagFileProcessorManager):
                def max_runs_reached(self):
                    return len(self._file_stats) >= 1 and super().max_runs_reached()

            # Both parses from the zygote (by default the manager forks the first one itself, patch 0011;
            # unpatched 3.3.2 has no zygote and no such field: both parses are forked by the manager there).
            import attrs

            first = {"zygote_after_results": 0} if "zygote_after_results" in attrs.fields_dict(_UntilParsed) else {}
            manager = _UntilParsed(max_runs=2, **first)
            manager.run()
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
            gc.unfreeze()
            for path in folder.iterdir():
                path.unlink()
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 2, records
    return records


def test_logging_not_configured_per_parse(probe_run):
    """0013: the parse process's logging handlers come from the zygote; no dictConfig ran in the parse process."""
    assert all(r["handlers"] > 0 for r in probe_run), probe_run
    assert [r["handlers_built_here"] for r in probe_run] == [0, 0]
