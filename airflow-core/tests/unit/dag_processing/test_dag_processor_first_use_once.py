"""3.3.2 series: per-parse setup done once, before the fork: the pydantic adapters (patch 0012).

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
from airflow.sdk.execution_time import comms as _comms_module
from airflow.dag_processing.processor import ToDagProcessor as _ToDagProcessor, ToManager as _ToManager
from sqlalchemy.pool import Pool as _Pool

# typing caches the alias: this is the one the parse process used for its comms decoder
_decoder_alias = _comms_module.CommsDecoder[_ToDagProcessor, _ToManager]
_tracked = {{id(_o) for _o in _gc.get_objects()}}
_comms = _task_runner.SUPERVISOR_COMMS
_handlers = [_h for _l in [_logging.getLogger()] + [
    _logging.getLogger(_n) for _n in list(_logging.root.manager.loggerDict)
] if isinstance(_l, _logging.Logger) for _h in _l.handlers]
with open({out!r}, "a") as _f:
    _f.write(_json.dumps({{
        "body_decoder_built_here": id(_comms.body_decoder) in _tracked,
        "err_decoder_built_here": id(_comms.err_decoder) in _tracked,
        "decoder_alias_built_here": id(_decoder_alias) in _tracked,
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


def test_comms_adapters_built_before_the_fork(probe_run):
    """0012: both pydantic adapters of the parse process's comms decoder are inherited, not built per parse."""
    assert [(r["body_decoder_built_here"], r["err_decoder_built_here"]) for r in probe_run] == [(False, False)] * 2


def test_comms_decoder_alias_built_before_the_fork(probe_run):
    """0012: ``CommsDecoder[ToDagProcessor, ToManager]`` (typing's cached alias) is inherited, not built per parse."""
    assert [r["decoder_alias_built_here"] for r in probe_run] == [False, False]


def test_warm_up_rehearses_a_dag_file_parse_once_and_leaves_no_trace(monkeypatch):
    """
    0012: the warm-up goes once through a DAG file parse (stability check, importer, serialization) on a
    throw-away file, without a DagBag, and leaves nothing behind: no module, no file, no sys.path entry, the
    signal handlers as they were. It runs once per process tree (the zygote inherits it from the manager).
    """
    import os
    import sys
    import tempfile

    from airflow.dag_processing import processor
    from airflow.dag_processing.importers.python_importer import PythonDagImporter
    from airflow.utils import dag_version_inflation_checker

    imported: list[str] = []
    checked: list[str] = []
    real_import_file = PythonDagImporter.import_file
    real_check = dag_version_inflation_checker.check_dag_file_stability

    def import_file(self, file_path, **kwargs):
        result = real_import_file(self, file_path, **kwargs)
        imported.append(str(file_path))
        assert [dag.dag_id for dag in result.dags] == ["__airflow_dag_processor_warm_up__"]
        assert not result.errors
        return result

    def check(path):
        checked.append(str(path))
        return real_check(path)

    monkeypatch.setattr(PythonDagImporter, "import_file", import_file)
    monkeypatch.setattr(processor, "check_dag_file_stability", check)
    monkeypatch.setattr(processor, "_warmed_up", False)
    sys_path = list(sys.path)
    modules = set(sys.modules)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGSEGV, signal.SIGALRM)}
    prefix = "airflow-dag-processor-warm-up-"
    tmp_before = {n for n in os.listdir(tempfile.gettempdir()) if n.startswith(prefix)}

    processor.warm_up_parse_process()
    processor.warm_up_parse_process()  # once per process (tree): nothing the second time

    assert len(imported) == 1 and checked == imported, (imported, checked)
    assert not os.path.exists(imported[0])
    assert os.path.basename(os.path.dirname(imported[0])).startswith(prefix)
    assert {n for n in os.listdir(tempfile.gettempdir()) if n.startswith(prefix)} <= tmp_before
    assert sys.path == sys_path
    assert not [m for m in set(sys.modules) - modules if m.startswith("unusual_prefix_")]
    assert {sig: signal.getsignal(sig) for sig in handlers} == handlers
