"""``[dag_processor] preload_modules``: operator-approved modules preloaded into the manager (patch 0006).

The real ``DagFileProcessorManager`` runs in the test process against the session's metadata database; its
parse processes are real forks. The modules are plain files in a temp dir put on ``sys.path`` (inherited by the
forked parse processes); each records every import attempt (pid, process context) in a log file, so the tests
see exactly where and in which order a module was imported.
"""

from __future__ import annotations

import gc
import logging
import re
import shutil
import signal
import sys
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
RECORD = (
    "import os as _os\n"
    "with open({log!r}, 'a') as _f:\n"
    "    _f.write(f\"{{__name__}} {{_os.getpid()}} {{_os.environ.get('_AIRFLOW_PROCESS_CONTEXT')}}\\n\")\n"
)

DAG_TEMPLATE = """
import {module}  # noqa: F401
from airflow.sdk import DAG
from airflow.providers.standard.operators.empty import EmptyOperator

with DAG("{dag_id}", schedule=None):
    EmptyOperator(task_id="t")
"""

# name -> module source, written into the DAG bundle (the dags folder) itself: importable in parse processes,
# which put the bundle's root on sys.path, but not in the manager. (No "dag" in it: not a DAG file.)
BUNDLE_MODULES = {"pl_bundle_only": "VALUE = 3\n"}

# pl_missing is listed and imported by a DAG but does not exist anywhere.
DAG_MODULES = ["pl_ok", "pl_raises", "pl_sleeps", "pl_parent_fails", "pl_unlisted", "pl_missing", "pl_bundle_only"]
LISTED = (
    "pl_ok, pl_raises,pl_sleeps , pl_parent_fails, pl_missing,pl_listed_unused,, not a module, .relative, 1abc,"
    "pl_bundle_only"
)
MALFORMED = ["not a module", ".relative", "1abc"]
ALL_TEST_MODULES = [*MODULES, *BUNDLE_MODULES, "pl_missing"]

PRELOADED = re.compile(
    r"Preloaded module (\S+) into the DAG processor manager: \d+\.\d ms, \d+ modules, [+-]\d+\.\d MiB RSS"
)


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


def _empty(folder: Path) -> None:
    for path in folder.iterdir():
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def _run_manager_scenario(home: Path, tmp: Path, preload: str | None, dag_modules: list[str]) -> dict:
    """Run the manager over one DAG file per module in `dag_modules`, PARSE_RUNS times each."""
    dags = home / "dags"
    _empty(dags)
    lib = tmp / "lib"
    lib.mkdir()
    import_log = tmp / "imports.log"
    import_log.touch()
    for name, source in MODULES.items():
        (lib / f"{name}.py").write_text(RECORD.format(log=str(import_log)) + source)
    for name, source in BUNDLE_MODULES.items():
        if name in dag_modules:
            (dags / f"{name}.py").write_text(RECORD.format(log=str(import_log)) + source)
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
        if preload is None:
            mp.delenv("AIRFLOW__DAG_PROCESSOR__PRELOAD_MODULES", raising=False)
        else:
            mp.setenv("AIRFLOW__DAG_PROCESSOR__PRELOAD_MODULES", preload)
        for name in ALL_TEST_MODULES:
            sys.modules.pop(name, None)
        gc.unfreeze()
        try:
            from airflow.dag_processing.manager import DagFileProcessorManager

            manager = DagFileProcessorManager(max_runs=PARSE_RUNS)
            handler = manager._log = _Records(manager.log)
            manager.run()
            in_parent = {name: sys.modules.get(name) for name in ALL_TEST_MODULES}
            frozen_ok = None
            if in_parent.get("pl_ok") is not None:
                tracked = {id(obj) for obj in gc.get_objects()}
                frozen_ok = (
                    id(vars(in_parent["pl_ok"])) not in tracked
                    and id(in_parent["pl_ok"].VALUE) not in tracked
                )
        finally:
            for sig, h in handlers.items():
                signal.signal(sig, h)
            gc.unfreeze()
            for name in ALL_TEST_MODULES:
                sys.modules.pop(name, None)
            _empty(dags)

    stats = {str(f.rel_path): stat for f, stat in manager._file_stats.items()}
    imports = []
    for line in import_log.read_text().splitlines():
        name, pid, context = line.split()
        imports.append((name, int(pid), context))
    import os

    return {
        "manager": manager,
        "stats": stats,
        "in_parent": {name: mod is not None for name, mod in in_parent.items()},
        "frozen_ok": frozen_ok,
        "imports": imports,
        "my_pid": os.getpid(),
        "warnings": handler.messages(logging.WARNING),
        "infos": handler.messages(logging.INFO),
    }


@pytest.fixture(scope="module")
def preload_run(airflow_home, tmp_path_factory):
    return _run_manager_scenario(Path(airflow_home), tmp_path_factory.mktemp("preload"), LISTED, DAG_MODULES)


@pytest.fixture(scope="module")
def no_preload_run(airflow_home, tmp_path_factory):
    return _run_manager_scenario(
        Path(airflow_home),
        tmp_path_factory.mktemp("no-preload"),
        None,
        ["pl_ok", "pl_raises", "pl_parent_fails"],
    )


def _parent_imports(run, name):
    return [i for i in run["imports"] if i[0] == name and i[1] == run["my_pid"]]


def _child_imports(run, name):
    return [i for i in run["imports"] if i[0] == name and i[1] != run["my_pid"]]


def _warnings_about(run, name):
    """Every warning that mentions module `name` (for asserting that there is none)."""
    return [w for w in run["warnings"] if re.search(rf"\b{name}\b", w)]


def _preload_failure(reason: str, name: str) -> str:
    return (
        f"Could not preload module {name} into the DAG processor manager (it imported fine in a parse process); "
        f"not retrying until restart. Parsing goes on without it. Reason: {reason}"
    )


def test_option_is_documented_with_empty_default():
    from airflow.configuration import conf, retrieve_configuration_description

    assert conf.get("dag_processor", "preload_modules") == ""
    option = retrieve_configuration_description()["dag_processor"]["options"]["preload_modules"]
    assert option["type"] == "string"
    assert option["default"] == ""
    assert option["example"]
    assert option["version_added"]
    assert "parse process" in option["description"] or "parsing process" in option["description"]


def test_listed_module_preloaded_only_after_a_successful_child_import(preload_run):
    run = preload_run
    assert run["in_parent"]["pl_ok"]
    parent = _parent_imports(run, "pl_ok")
    assert len(parent) == 1, run["imports"]
    assert parent[0][2] == "server"
    first_parent = run["imports"].index(parent[0])
    children_before = [i for i in run["imports"][:first_parent] if i[0] == "pl_ok"]
    assert children_before and all(i[1] != run["my_pid"] for i in children_before)
    assert all(i[2] == "client" for i in children_before)
    # later parse processes inherit it instead of importing it again
    assert len(_child_imports(run, "pl_ok")) == 1
    # preloaded modules are frozen (patch 0005)
    assert run["frozen_ok"] is True
    # logged with what it cost
    assert [m.group(1) for m in map(PRELOADED.fullmatch, run["infos"]) if m] == ["pl_ok"]
    assert "pl_ok" in run["manager"]._preloaded_modules


@pytest.mark.parametrize("name", ["pl_raises", "pl_sleeps", "pl_missing"])
def test_module_failing_or_hanging_in_child_never_imported_in_parent(preload_run, name):
    run = preload_run
    assert not run["in_parent"][name]
    assert not _parent_imports(run, name)
    if name != "pl_missing":
        assert _child_imports(run, name)  # it was tried, in parse processes only
    # parsing went on: every file was parsed PARSE_RUNS times, the good one has its DAG
    stats = run["stats"]
    assert all(stat.run_count == PARSE_RUNS for stat in stats.values()), stats
    assert stats[f"dag_{name}.py"].import_errors == 1
    assert stats["dag_pl_ok.py"].num_dags == 1
    # no preloading warning about it: the parse failure / timeout is reported the usual way
    assert not [w for w in _warnings_about(run, name) if "preload" in w.lower()]
    if name == "pl_sleeps":
        killed = [
            w
            for w in run["warnings"]
            if re.fullmatch(r"Processor for .*'dag_pl_sleeps\.py'.* with PID \d+ started \d+ ago killing it\.", w)
        ]
        assert len(killed) == PARSE_RUNS, run["warnings"]  # one timeout per parse, as without the option


def test_module_failing_in_parent_logged_once_and_not_retried(preload_run):
    run = preload_run
    assert not run["in_parent"]["pl_parent_fails"]
    assert len(_parent_imports(run, "pl_parent_fails")) == 1  # tried once, not on every report
    assert len(_child_imports(run, "pl_parent_fails")) == PARSE_RUNS  # children report it every run
    assert _warnings_about(run, "pl_parent_fails") == [
        _preload_failure("ImportError: pl_parent_fails only works in a parse process", "pl_parent_fails")
    ]
    assert run["stats"]["dag_pl_parent_fails.py"].num_dags == 1  # parsing unaffected


def test_malformed_entries_warned_once_at_start(preload_run):
    run = preload_run
    expected = (
        "Ignoring malformed entries in [dag_processor] preload_modules (expected comma-separated absolute "
        "module names, e.g. 'numpy, pandas'): " + ", ".join(repr(entry) for entry in MALFORMED)
    )
    assert [w for w in run["warnings"] if w.startswith("Ignoring malformed entries")] == [expected]


def test_unlisted_and_unused_modules_never_imported_in_parent(preload_run):
    run = preload_run
    assert _child_imports(run, "pl_unlisted")
    assert not run["in_parent"]["pl_unlisted"]
    assert not _parent_imports(run, "pl_unlisted")
    assert not run["in_parent"]["pl_listed_unused"]  # listed, but no parse process imported it
    assert not _warnings_about(run, "pl_unlisted")


def test_option_absent_no_behaviour_change(no_preload_run):
    run = no_preload_run
    assert not any(run["in_parent"].values())
    assert all(pid != run["my_pid"] for _, pid, _ in run["imports"])
    assert not [m for m in run["infos"] if PRELOADED.fullmatch(m)]
    assert not [m for m in run["infos"] if m.startswith("Modules approved for preloading")]
    # parsing as usual
    stats = run["stats"]
    assert all(stat.run_count == PARSE_RUNS for stat in stats.values())
    assert stats["dag_pl_ok.py"].num_dags == 1
    assert stats["dag_pl_raises.py"].import_errors == 1
    # each parse process imports the module itself
    assert len([i for i in run["imports"] if i[0] == "pl_ok"]) == PARSE_RUNS


def test_module_only_in_the_dag_bundle_is_not_preloaded(preload_run):
    # Parse processes put the bundle root on sys.path, the manager does not: the manager cannot import it,
    # says so once, and parse processes go on importing it themselves.
    run = preload_run
    assert len(_child_imports(run, "pl_bundle_only")) == PARSE_RUNS
    assert not run["in_parent"]["pl_bundle_only"]
    assert not _parent_imports(run, "pl_bundle_only")
    assert _warnings_about(run, "pl_bundle_only") == [
        _preload_failure("ModuleNotFoundError: No module named 'pl_bundle_only'", "pl_bundle_only")
    ]
    assert run["stats"]["dag_pl_bundle_only.py"].num_dags == 1
