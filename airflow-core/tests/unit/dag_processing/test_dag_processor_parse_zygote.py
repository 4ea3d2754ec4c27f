"""3.3.2 series: parse processes are forked from a parse zygote (patch 0011).

The real ``DagFileProcessorManager`` runs in the test process against the session's metadata database, with real
DAG files parsed by real processes. Each DAG file records, when it runs, its pid, its parent's pid and title,
and its own private memory (USS), so the tests see where each parse process came from and what it cost.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import signal
from pathlib import Path

import pytest

# Records (appends one JSON line per parse) who ran the file and what this parse process holds privately.
PROBE = """
import json as _json, os as _os
import psutil as _psutil
from airflow.sdk import DAG
from airflow.providers.standard.operators.empty import EmptyOperator

{extra}

def _on_failure(context):
    with open({out!r}, "a") as _f:
        _f.write(_json.dumps({{"callback": context["reason"], "pid": _os.getpid(), "ppid": _os.getppid()}}) + "\\n")

with DAG("{dag_id}", schedule=None, on_failure_callback=_on_failure):
    EmptyOperator(task_id="t")

_parent = _psutil.Process(_os.getppid())
with open({out!r}, "a") as _f:
    _f.write(_json.dumps({{
        "dag_id": "{dag_id}",
        "pid": _os.getpid(),
        "ppid": _os.getppid(),
        "parent_cmdline": " ".join(_parent.cmdline()).strip(),
        "uss": _psutil.Process().memory_full_info().uss,
    }}) + "\\n")
"""

HANG = "import time\ntime.sleep(600)\n"
ZYGOTE_TITLE = "airflow dag-processor -- parse zygote"


@pytest.fixture
def dags_folder(airflow_home, clear_db, monkeypatch):
    folder = Path(airflow_home) / "dags"
    for path in folder.iterdir():
        path.unlink() if path.is_file() else shutil.rmtree(path)
    monkeypatch.setenv("AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL", "0")
    monkeypatch.setenv("AIRFLOW__DAG_PROCESSOR__PRINT_STATS_INTERVAL", "0")
    monkeypatch.setenv("AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES", "2")
    monkeypatch.setenv("_AIRFLOW_PROCESS_CONTEXT", "")
    monkeypatch.delenv("AIRFLOW__DAG_PROCESSOR__PARSE_ZYGOTE", raising=False)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)}
    gc.unfreeze()
    try:
        yield folder
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        gc.unfreeze()
        for path in folder.iterdir():
            path.unlink() if path.is_file() else shutil.rmtree(path)


def _manager(max_runs: int, folder: Path, captured: dict | None = None, *, from_first_parse=True, **kwargs):
    """
    A real manager that stops once every DAG file in ``folder`` was parsed ``max_runs`` times.

    With ``captured``, every serialized DAG that a parse process sends back is recorded there (by dag_id).
    ``from_first_parse``: the zygote is started before the first parse (``zygote_after_results = 0``), so
    that every parse process comes from it; by default the manager forks the first ones itself.
    """
    import attrs

    from airflow.dag_processing.manager import DagFileProcessorManager

    if from_first_parse and "zygote_after_results" in attrs.fields_dict(DagFileProcessorManager):
        kwargs.setdefault("zygote_after_results", 0)

    class _UntilParsed(DagFileProcessorManager):
        def max_runs_reached(self):
            expected = len(list(folder.glob("*.py")))
            return len(self._file_stats) >= expected and super().max_runs_reached()

        def handle_parsing_result(self, file, proc, **kw):
            if captured is not None and proc.parsing_result is not None:
                for dag in proc.parsing_result.serialized_dags:
                    captured[dag.data["dag"]["dag_id"]] = dag.data
                captured.setdefault("__import_errors__", {}).update(proc.parsing_result.import_errors or {})
            return super().handle_parsing_result(file, proc, **kw)

    return _UntilParsed(max_runs=max_runs, **kwargs)


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []


def _write_probes(folder: Path, out: Path, count: int, extra: str = "") -> None:
    for i in range(count):
        (folder / f"probe_{i}.py").write_text(PROBE.format(out=str(out), dag_id=f"probe_{i}", extra=extra))


def test_parse_processes_are_children_of_the_zygote(dags_folder, tmp_path):
    out = tmp_path / "probe.jsonl"
    _write_probes(dags_folder, out, 4)
    manager = _manager(2, dags_folder)
    manager.run()

    records = _records(out)
    assert len(records) == 8, records
    assert {r["parent_cmdline"] for r in records} == {ZYGOTE_TITLE}
    assert {r["ppid"] for r in records} != {os.getpid()}
    assert len({r["ppid"] for r in records}) == 1  # one zygote served every parse
    assert manager.zygote_starts == 1
    assert all(stat.num_dags == 1 and stat.run_count == 2 for stat in manager._file_stats.values())
    # the zygote is gone with the manager's loop
    assert not psutil_alive(records[0]["ppid"])


def test_zygote_started_once_the_manager_handled_a_result(dags_folder, tmp_path):
    """
    By default the zygote is forked only after the manager has handled its first parse result.

    The manager's first result handling rewrites pages all over its heap; a zygote forked before that would
    keep the old copy of each for its whole life. The parse processes started before are forked by the
    manager itself, as with ``parse_zygote = False``; every later one comes from the zygote.
    """
    out = tmp_path / "probe.jsonl"
    _write_probes(dags_folder, out, 4)
    manager = _manager(2, dags_folder, from_first_parse=False)
    assert manager.zygote_after_results == 1
    manager.run()

    records = _records(out)
    assert len(records) == 8, records
    parents = [r["ppid"] for r in records]
    direct = [p for p in parents if p == os.getpid()]
    assert 1 <= len(direct) <= 2, parents  # at most one round of parsing_processes (2) before the zygote
    assert parents[0] == os.getpid()
    zygote_parents = [r for r in records if r["ppid"] != os.getpid()]
    assert parents[len(direct) :] == [zygote_parents[0]["ppid"]] * len(zygote_parents)  # one zygote, after
    assert manager.zygote_starts == 1
    assert all(stat.num_dags == 1 and stat.run_count == 2 for stat in manager._file_stats.values())


def psutil_alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# Unpatched 3.3.2 measures 22 MiB here without .pyc files (every import compiles from source in the parse
# process), more under memory pressure. What a parse process inherits from the zygote stays shared.
USS_BOUND = 12 * 2**20


def test_parse_process_private_memory_is_bounded(dags_folder, tmp_path):
    out = tmp_path / "probe.jsonl"
    _write_probes(dags_folder, out, 4)
    _manager(2, dags_folder).run()

    records = _records(out)
    assert len(records) == 8
    uss = sorted(r["uss"] for r in records)
    median = uss[len(uss) // 2]
    assert median < USS_BOUND, [round(u / 2**20, 1) for u in uss]


def test_hung_dag_file_is_killed_at_the_timeout(dags_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("AIRFLOW__DAG_PROCESSOR__DAG_FILE_PROCESSOR_TIMEOUT", "3")
    out = tmp_path / "probe.jsonl"
    _write_probes(dags_folder, out, 1)
    started = tmp_path / "hung.started"
    (dags_folder / "hung.py").write_text(
        f"import os\nopen({str(started)!r}, 'a').write(f'{{os.getpid()}} {{os.getppid()}}\\n')\n"
        "from airflow.sdk import DAG\n" + HANG
    )
    manager = _manager(2, dags_folder)
    manager.run()

    hung = [tuple(map(int, line.split())) for line in started.read_text().splitlines()]
    assert len(hung) == 2  # parsed (and killed) twice
    zygote_pids = {r["ppid"] for r in _records(out)}
    assert {ppid for _, ppid in hung} <= zygote_pids  # forked by the zygote too
    assert not any(psutil_alive(pid) for pid, _ in hung)
    stats = {str(f.rel_path): s for f, s in manager._file_stats.items()}
    assert stats["hung.py"].import_errors == 1 and stats["hung.py"].num_dags == 0
    assert stats["hung.py"].run_count == 2
    assert stats["probe_0.py"].num_dags == 1  # the other file is parsed as usual


def test_killed_zygote_is_recreated_and_parsing_goes_on(dags_folder, tmp_path, monkeypatch):
    # one parse at a time: the zygote is killed between parses, so every parse process has a zygote parent
    monkeypatch.setenv("AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES", "1")
    out = tmp_path / "probe.jsonl"
    _write_probes(dags_folder, out, 2)
    killed: list[int] = []
    managers: list = []

    def kill_zygote_after_first_round():
        if killed or not managers:
            return
        manager = managers[0]
        zygote = manager._zygote
        if zygote is not None and zygote.alive and len(_records(out)) >= 2 and not manager._processors:
            os.kill(zygote.pid, signal.SIGKILL)
            killed.append(zygote.pid)

    manager = _manager(3, dags_folder, heartbeat=kill_zygote_after_first_round)
    managers.append(manager)
    manager.run()

    records = _records(out)
    assert killed
    assert len(records) == 6
    assert manager.zygote_starts == 2
    parents = [r["ppid"] for r in records]
    assert killed[0] in parents[:2]
    later = set(parents[2:])
    assert len(later) == 1 and killed[0] not in later  # the replacement serves every later parse
    assert {r["parent_cmdline"] for r in records} == {ZYGOTE_TITLE}
    assert all(stat.num_dags == 1 and stat.run_count == 3 for stat in manager._file_stats.values())


def test_zygote_over_its_memory_bound_is_replaced(dags_folder, tmp_path):
    """A zygote whose USS exceeds ``zygote_max_uss`` is replaced; parsing goes on from the fresh one."""
    out = tmp_path / "probe.jsonl"
    _write_probes(dags_folder, out, 2)
    manager = _manager(3, dags_folder)
    manager.zygote_max_uss = 1  # every zygote is "too big" ...
    manager.zygote_check_interval = 0  # ... at every check
    manager.run()

    records = _records(out)
    assert len(records) == 6
    assert {r["parent_cmdline"] for r in records} == {ZYGOTE_TITLE}
    # each fork after the first found the zygote too big and started a fresh one
    assert manager.zygote_starts == 6
    assert len({r["ppid"] for r in records}) == 6
    assert all(stat.num_dags == 1 and stat.run_count == 3 for stat in manager._file_stats.values())
    assert not any(psutil_alive(r["ppid"]) for r in records)  # retired zygotes exited


def test_callbacks_run_in_parse_processes_from_the_zygote(dags_folder, tmp_path):
    from airflow.callbacks.callback_requests import DagCallbackRequest

    out = tmp_path / "probe.jsonl"
    _write_probes(dags_folder, out, 1)
    queued: list = []
    managers: list = []

    def queue_callback():
        if queued or not managers or not _records(out):
            return
        managers[0]._add_callback_to_queue(
            DagCallbackRequest(
                filepath="probe_0.py",
                bundle_name="dags-folder",
                bundle_version=None,
                dag_id="probe_0",
                run_id="manual__1",
                is_failure_callback=True,
                msg="zygote-callback",
            )
        )
        queued.append(True)

    manager = _manager(3, dags_folder, heartbeat=queue_callback)
    managers.append(manager)
    manager.run()

    callbacks = [r for r in _records(out) if "callback" in r]
    assert [r["callback"] for r in callbacks] == ["zygote-callback"]
    parses = [r for r in _records(out) if "dag_id" in r]
    assert callbacks[0]["ppid"] in {r["ppid"] for r in parses}  # a child of the zygote ran it


def test_zygote_cost_is_reported(dags_folder, tmp_path):
    out = tmp_path / "probe.jsonl"
    _write_probes(dags_folder, out, 1)
    manager = _manager(1, dags_folder)
    messages: list[str] = []
    log = manager.log

    class _Log:
        def __getattr__(self, name):
            target = getattr(log, name)

            def record(msg, *args, **kwargs):
                messages.append(str(msg) % args if args else str(msg))
                return target(msg, *args, **kwargs)

            return record if name in ("info", "warning", "error") else target

    manager._log = _Log()
    manager.run()
    ready = [m for m in messages if m.startswith("Parse zygote (pid ") and " ready: warm-up " in m]
    assert len(ready) == 1, messages
    uss_mib = float(ready[0].split("USS ")[1].split(" MiB")[0])
    # The zygote's own private memory (what its warm-up wrote), bounded: everything else is shared.
    assert 0 < uss_mib < 60, ready


def test_zygote_is_forked_from_a_frozen_heap(dags_folder, tmp_path, monkeypatch):
    # Objects the manager made after its start-up freeze (here: a ballast made right before the zygote is
    # started) would be walked by a collection in the zygote, which copies every page they live on into it,
    # and by the manager's own later collections, which rewrite pages the two share. The manager collects
    # and freezes right before it forks a zygote, so the zygote inherits nothing a collection walks.
    from airflow.dag_processing.manager import DagFileProcessorManager
    from airflow.dag_processing.zygote import ParseZygote

    out = tmp_path / "probe.jsonl"
    _write_probes(dags_folder, out, 1)
    ballast: list = []
    unfrozen_at_fork: list[int] = []
    real_start_zygote = DagFileProcessorManager._start_zygote
    real_start = ParseZygote.start.__func__

    def start_zygote(self):
        ballast.extend([i] for i in range(100_000))  # lists: always GC-tracked
        return real_start_zygote(self)

    def start(cls, **kwargs):
        unfrozen_at_fork.append(len(gc.get_objects()))  # frozen objects are in no generation
        return real_start(cls, **kwargs)

    monkeypatch.setattr(DagFileProcessorManager, "_start_zygote", start_zygote)
    monkeypatch.setattr(ParseZygote, "start", classmethod(start))
    manager = _manager(1, dags_folder)
    manager.run()

    assert len(_records(out)) == 1
    assert len(unfrozen_at_fork) == 1 and ballast
    assert unfrozen_at_fork[0] < 20_000, unfrozen_at_fork


def _example_dag_files() -> list[Path]:
    import airflow.example_dags

    files = sorted(Path(airflow.example_dags.__path__[0]).glob("example_*.py"))
    repo_examples = Path(__file__).resolve().parents[4] / "examples" / "dags"  # this repository's examples
    if repo_examples.is_dir():
        files += sorted(repo_examples.glob("*.py"))
    return files


def test_serialized_dags_equal_direct_fork(dags_folder, monkeypatch):
    """
    The DAGs serialized by parse processes forked from the zygote equal those forked by the manager.

    The manager's own fork (``parse_zygote = False``) is upstream 3.3.2's path; ``bench dag-processor
    --compare-serialized`` compares against the unpatched build itself.
    """
    monkeypatch.setenv("AIRFLOW__DAG_PROCESSOR__DAG_FILE_PROCESSOR_TIMEOUT", "120")
    for path in _example_dag_files():
        shutil.copy(path, dags_folder / path.name)

    results = {}
    for zygote in ("True", "False"):
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("AIRFLOW__DAG_PROCESSOR__PARSE_ZYGOTE", zygote)
            captured: dict = {}
            manager = _manager(1, dags_folder, captured=captured)
            manager.run()
            results[zygote] = captured
            assert manager.zygote_starts == (1 if zygote == "True" else 0)
    dags = set(results["True"]) - {"__import_errors__"}
    assert len(dags) > 40, sorted(dags)
    assert sorted(results["True"]) == sorted(results["False"])
    for dag_id in sorted(results["True"]):
        assert results["True"][dag_id] == results["False"][dag_id], dag_id
