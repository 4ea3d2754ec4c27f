"""3.3.2 series: ``[dag_processor] preload_modules``, operator-approved preloading (patch 0010).

The real ``DagFileProcessorManager`` runs in the test process against the session's metadata database; its
parse processes are real forks. The modules are plain files in a temp dir put on ``sys.path`` (inherited by the
forked parse processes); each records every import attempt (pid, process context, and in the DAG processor
whether a metadata-DB connection or transaction was open) in a log file, so the tests see exactly where and in
which order a module was imported. Parse processes run in the "client" process context; the process that
preloads (the manager, or with patch 0011 the parse zygote) in the "server" one. The SIGTERM test runs the real
``airflow dag-processor`` command.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import ClassVar

import pytest

PARSE_RUNS = 2
PARSE_TIMEOUT = 3  # seconds; `pl_sleeps` sleeps far longer

# name -> module source. "{log}" is replaced by the import-attempt log path.
MODULES = {
    # imports fine everywhere
    "pl_ok": "VALUE = [{'n': i} for i in range(1000)]\n",
    # raises on import everywhere
    "pl_raises": "raise RuntimeError('pl_raises refuses to be imported')\n",
    # hangs on import: the parse process is killed on timeout
    "pl_sleeps": "import time\ntime.sleep(120)\n",
    # imports fine in parse processes (client context), fails in the manager (server context)
    "pl_parent_fails": (
        "import os\n"
        "if os.environ.get('_AIRFLOW_PROCESS_CONTEXT') != 'client':\n"
        "    raise ImportError('pl_parent_fails only works in a parse process')\n"
    ),
    # imported by a DAG file but not listed
    "pl_unlisted": "VALUE = 1\n",
    # imported in a parse process only as a dependency of a listed-but-unimported module: never reported
    "pl_listed_unused": "VALUE = 2\n",
}
# Each import attempt appends "<name> <pid> <context> <db>": <db> is, in the server context, the number of
# connections checked out of the metadata DB pool plus 1 if the thread's ORM session is in a transaction.
RECORD = (
    "import os as _os\n"
    "_db = '-'\n"
    "if _os.environ.get('_AIRFLOW_PROCESS_CONTEXT') == 'server':\n"
    "    from airflow import settings as _settings\n"
    "    _pool = _settings.engine.pool if _settings.engine is not None else None\n"
    "    _out = _pool.checkedout() if hasattr(_pool, 'checkedout') else 0\n"
    "    _reg = getattr(_settings.Session, 'registry', None)\n"
    "    _tx = int(bool(_reg is not None and _reg.has() and _settings.Session().in_transaction()))\n"
    "    _db = str(_out + _tx)\n"
    "with open({log!r}, 'a') as _f:\n"
    "    _f.write(f\"{{__name__}} {{_os.getpid()}} {{_os.environ.get('_AIRFLOW_PROCESS_CONTEXT')}} {{_db}}\\n\")\n"
)

DAG_TEMPLATE = """
import {module}  # noqa: F401
from airflow.sdk import DAG
from airflow.providers.standard.operators.empty import EmptyOperator

with DAG("{dag_id}", schedule=None):
    EmptyOperator(task_id="t")
"""

# pl_missing is listed and imported by a DAG but does not exist anywhere.
DAG_MODULES = ["pl_ok", "pl_raises", "pl_sleeps", "pl_parent_fails", "pl_unlisted", "pl_missing"]
LISTED = "pl_ok, pl_raises,pl_sleeps , pl_parent_fails, pl_missing,pl_listed_unused,, not a module, .relative, 1abc"
MALFORMED = ["not a module", ".relative", "1abc"]
ALL_TEST_MODULES = [*MODULES, "pl_missing"]


class _Records:
    """Wraps the manager's (structlog) logger, recording each message at a stdlib level."""

    LEVELS: ClassVar[dict[str, int]] = {
        "debug": logging.DEBUG,
        "info": logging.INFO,
        "warning": logging.WARNING,
        "warn": logging.WARNING,
        "error": logging.ERROR,
        "exception": logging.ERROR,
        "critical": logging.CRITICAL,
    }

    def __init__(self, log):
        self._log = log
        self.records: list[tuple[int, str]] = []

    def __getattr__(self, name):
        target = getattr(self._log, name)
        if name not in self.LEVELS:
            return target

        def record(msg, *args, **kwargs):
            self.records.append((self.LEVELS[name], str(msg) % args if args else str(msg)))
            return target(msg, *args, **kwargs)

        return record

    def messages(self, level=logging.DEBUG):
        return [msg for lvl, msg in self.records if lvl >= level]


def _manager(max_runs: int, folder: Path):
    """
    A real manager that stops once every DAG file in ``folder`` was parsed ``max_runs`` times.

    3.3.2's ``max_runs_reached()`` is true as soon as the loop ran ``max_runs`` times while no parse has
    finished yet (no file stats at all), so on its own it can stop before the first result arrives.
    """
    from airflow.dag_processing.manager import DagFileProcessorManager

    class _UntilParsed(DagFileProcessorManager):
        def max_runs_reached(self):
            expected = len(list(folder.glob("*.py")))
            return len(self._file_stats) >= expected and super().max_runs_reached()

    return _UntilParsed(max_runs=max_runs)


def _run_manager_scenario(
    home: Path, tmp: Path, preload: str | None, dag_modules: list[str], zygote: bool = True
) -> dict:
    """Run the manager over one DAG file per module in `dag_modules`, PARSE_RUNS times each."""
    dags = home / "dags"
    for path in dags.iterdir():
        path.unlink()
    lib = tmp / "lib"
    lib.mkdir()
    import_log = tmp / "imports.log"
    import_log.touch()
    for name, source in MODULES.items():
        (lib / f"{name}.py").write_text(RECORD.format(log=str(import_log)) + source)
    for name in dag_modules:
        (dags / f"dag_{name}.py").write_text(DAG_TEMPLATE.format(module=name, dag_id=f"dag_{name}"))

    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)}
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(lib))
        mp.setenv("PYTHONPATH", str(lib))
        mp.setenv("_AIRFLOW_PROCESS_CONTEXT", "")  # the manager sets "server"; restored afterwards
        mp.setenv("AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL", "0")
        mp.setenv("AIRFLOW__DAG_PROCESSOR__PRINT_STATS_INTERVAL", "0")
        mp.setenv("AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES", "2")
        mp.setenv("AIRFLOW__DAG_PROCESSOR__DAG_FILE_PROCESSOR_TIMEOUT", str(PARSE_TIMEOUT))
        # with the parse zygote (patch 0011) preloading happens there; without it, in the manager
        mp.setenv("AIRFLOW__DAG_PROCESSOR__PARSE_ZYGOTE", str(zygote))
        if preload is None:
            mp.delenv("AIRFLOW__DAG_PROCESSOR__PRELOAD_MODULES", raising=False)
        else:
            mp.setenv("AIRFLOW__DAG_PROCESSOR__PRELOAD_MODULES", preload)
        for name in ALL_TEST_MODULES:
            sys.modules.pop(name, None)
        gc.unfreeze()
        try:
            manager = _manager(PARSE_RUNS, dags)
            handler = manager._log = _Records(manager.log)
            manager.run()
        finally:
            for sig, h in handlers.items():
                signal.signal(sig, h)
            gc.unfreeze()
            for name in ALL_TEST_MODULES:
                sys.modules.pop(name, None)
            for path in dags.iterdir():
                path.unlink()

    stats = {str(f.rel_path): stat for f, stat in manager._file_stats.items()}
    imports = []
    for line in import_log.read_text().splitlines():
        name, pid, context, db = line.split()
        imports.append((name, int(pid), context, db))

    return {
        "manager": manager,
        "stats": stats,
        "imports": imports,
        "warnings": handler.messages(logging.WARNING),
        "infos": handler.messages(logging.INFO),
    }


@pytest.fixture(scope="module")
def preload_run(airflow_home, tmp_path_factory):
    return _run_manager_scenario(Path(airflow_home), tmp_path_factory.mktemp("preload"), LISTED, DAG_MODULES)


@pytest.fixture(scope="module")
def preload_run_in_manager(airflow_home, tmp_path_factory):
    """The same scenario with the parse zygote off: the manager itself preloads."""
    return _run_manager_scenario(
        Path(airflow_home), tmp_path_factory.mktemp("preload-manager"), LISTED, DAG_MODULES, zygote=False
    )


@pytest.fixture(scope="module")
def no_preload_run(airflow_home, tmp_path_factory):
    return _run_manager_scenario(
        Path(airflow_home),
        tmp_path_factory.mktemp("no-preload"),
        None,
        ["pl_ok", "pl_raises", "pl_parent_fails"],
    )


def _parent_imports(run, name):
    """Import attempts in the DAG processor (manager or zygote): the "server" process context."""
    return [i for i in run["imports"] if i[0] == name and i[2] == "server"]


def _child_imports(run, name):
    """Import attempts in parse processes: the "client" process context."""
    return [i for i in run["imports"] if i[0] == name and i[2] == "client"]


def _warnings_about(run, name):
    return [w for w in run["warnings"] if name in w]


def test_option_is_documented_with_empty_default():
    from airflow.configuration import conf, retrieve_configuration_description

    assert conf.get("dag_processor", "preload_modules") == ""
    option = retrieve_configuration_description()["dag_processor"]["options"]["preload_modules"]
    assert option["type"] == "string"
    assert option["default"] == ""
    assert option["example"] == "numpy, pandas"
    assert option["version_added"] == "3.3.2"
    assert "sys.path" in option["description"]  # how names resolve when DAG bundles add their paths


@pytest.mark.parametrize("where", ["preload_run", "preload_run_in_manager"])
def test_listed_module_preloaded_only_after_a_successful_child_import(request, where):
    run = request.getfixturevalue(where)
    parent = _parent_imports(run, "pl_ok")
    assert parent, run["imports"]
    first_parent = run["imports"].index(parent[0])
    children_before = [i for i in run["imports"][:first_parent] if i[0] == "pl_ok"]
    assert len(children_before) == 1 and children_before[0][2] == "client", run["imports"]
    # later parse processes inherit it instead of importing it again
    assert len(_child_imports(run, "pl_ok")) == 1
    assert run["stats"]["dag_pl_ok.py"].run_count == PARSE_RUNS
    # each module's name is logged before it is imported, and what it cost after
    infos = run["infos"]
    before = [i for i, m in enumerate(infos) if m.startswith("Preloading module pl_ok ")]
    after = [i for i, m in enumerate(infos) if m.startswith("Preloaded module pl_ok ") and " ms, " in m]
    assert before and after and before[0] < after[0], infos
    assert "pl_ok" in run["manager"]._preloaded_modules


@pytest.mark.parametrize("where", ["preload_run", "preload_run_in_manager"])
def test_preload_import_runs_outside_any_db_session_or_transaction(request, where):
    run = request.getfixturevalue(where)
    server_side = [i for i in run["imports"] if i[2] == "server"]
    assert {i[0] for i in server_side} == {"pl_ok", "pl_parent_fails"}, run["imports"]
    # no connection checked out of the metadata DB pool, no ORM transaction open, while user code imported
    assert [i[3] for i in server_side] == ["0"] * len(server_side), server_side


@pytest.mark.parametrize("name", ["pl_raises", "pl_sleeps", "pl_missing"])
def test_module_failing_or_hanging_in_child_never_imported_in_parent(preload_run, name):
    run = preload_run
    assert not _parent_imports(run, name)
    if name != "pl_missing":
        assert _child_imports(run, name)  # it was tried, in parse processes only
    # parsing went on: every file was parsed PARSE_RUNS times, the good one has its DAG
    stats = run["stats"]
    assert all(stat.run_count == PARSE_RUNS for stat in stats.values()), stats
    assert stats[f"dag_{name}.py"].import_errors == 1
    assert stats["dag_pl_ok.py"].num_dags == 1
    # no preloading message about it: the parse failure / timeout is reported the usual way
    prefixes = tuple(f"{verb} module {name} " for verb in ("Preloading", "Preloaded", "Could not preload"))
    assert not [m for m in run["infos"] if m.startswith(prefixes)]
    assert name not in run["manager"]._preload_failures
    if name == "pl_sleeps":
        killed = [w for w in run["warnings"] if "dag_pl_sleeps.py" in w and "Killing it!" in w]
        assert len(killed) == PARSE_RUNS, run["warnings"]  # one timeout per parse, as without the option


def test_module_failing_in_parent_logged_once_and_not_retried(preload_run):
    run = preload_run
    assert len(_parent_imports(run, "pl_parent_fails")) == 1  # tried once, not on every report
    assert len(_child_imports(run, "pl_parent_fails")) == PARSE_RUNS  # children report it every run
    warnings = _warnings_about(run, "pl_parent_fails")
    assert len(warnings) == 1, warnings
    assert warnings[0].endswith("Reason: ImportError: pl_parent_fails only works in a parse process")
    assert list(run["manager"]._preload_failures) == ["pl_parent_fails"]
    assert run["stats"]["dag_pl_parent_fails.py"].num_dags == 1  # parsing unaffected


def test_malformed_entries_warned_once_at_start(preload_run):
    run = preload_run
    warnings = [w for w in run["warnings"] if "malformed" in w]
    assert len(warnings) == 1, run["warnings"]
    assert warnings[0].endswith(": " + ", ".join(repr(entry) for entry in MALFORMED))


def test_unlisted_and_unused_modules_never_imported_in_parent(preload_run):
    run = preload_run
    assert _child_imports(run, "pl_unlisted")
    assert not _parent_imports(run, "pl_unlisted")
    assert not _parent_imports(run, "pl_listed_unused")  # listed, but no parse process imported it
    assert not _warnings_about(run, "pl_unlisted")


def test_option_absent_no_behaviour_change(no_preload_run):
    run = no_preload_run
    assert all(context == "client" for _, _, context, _ in run["imports"]), run["imports"]
    assert not [m for m in run["infos"] if m.startswith(("Preloading module", "Preloaded module"))]
    # parsing as usual
    stats = run["stats"]
    assert all(stat.run_count == PARSE_RUNS for stat in stats.values())
    assert stats["dag_pl_ok.py"].num_dags == 1
    assert stats["dag_pl_raises.py"].import_errors == 1
    # each parse process imports the module itself
    assert len([i for i in run["imports"] if i[0] == "pl_ok"]) == PARSE_RUNS


SLOW = (
    # fast in parse processes; in the DAG processor it hangs far longer than the test waits
    "import os, time\n"
    "if os.environ.get('_AIRFLOW_PROCESS_CONTEXT') == 'server':\n"
    "    time.sleep(900)\n"
)


def test_sigterm_during_slow_preload_import_stops_dag_processor(airflow_home, tmp_path):
    """The real `airflow dag-processor`: SIGTERM while a preload import hangs stops it, with its children."""
    import psutil

    dags = Path(airflow_home) / "dags"
    for path in dags.iterdir():
        path.unlink()
    lib = tmp_path / "lib"
    lib.mkdir()
    import_log = tmp_path / "imports.log"
    import_log.touch()
    (lib / "pl_slow.py").write_text(RECORD.format(log=str(import_log)) + SLOW)
    (dags / "dag_pl_slow.py").write_text(DAG_TEMPLATE.format(module="pl_slow", dag_id="dag_pl_slow"))
    out = tmp_path / "dag-processor.log"
    env = {
        **os.environ,
        "PYTHONPATH": str(lib),
        "_AIRFLOW_PROCESS_CONTEXT": "",
        "AIRFLOW__DAG_PROCESSOR__PRELOAD_MODULES": "pl_slow",
        "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "0",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "1",
        "AIRFLOW__LOGGING__DAG_PROCESSOR_LOG_TARGET": "file",
    }
    with open(out, "wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "airflow", "dag-processor"], stdout=sink, stderr=subprocess.STDOUT, env=env
        )
    try:
        # Until the DAG processor logs that it preloads pl_slow (or, without the option, until the file was
        # parsed three times with no preloading at all).
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            text = out.read_text(errors="replace")
            if "Preloading module pl_slow " in text:
                break
            if len([line for line in import_log.read_text().splitlines() if " client " in line]) >= 3:
                break
            time.sleep(0.2)
        text = out.read_text(errors="replace")
        assert "Preloading module pl_slow " in text, text[-3000:]
        # wait until the import has really started (its first line ran) in the DAG processor
        while time.monotonic() < deadline and " server " not in import_log.read_text():
            time.sleep(0.1)
        assert " server " in import_log.read_text()
        family = [proc.pid] + [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
        proc.send_signal(signal.SIGTERM)
        # A liveness bound, not a timing assertion: the import would hang for 900 s.
        returncode = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for path in dags.iterdir():
            path.unlink()
    text = out.read_text(errors="replace")
    assert returncode == 0, text[-3000:]
    assert "Exiting gracefully upon receiving signal 15" in text
    assert "Could not preload module pl_slow" not in text  # the signal is not taken for an import failure
    left = [pid for pid in family if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]
    assert left == [], left
