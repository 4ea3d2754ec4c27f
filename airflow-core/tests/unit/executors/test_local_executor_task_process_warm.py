"""A task process forked by a LocalExecutor worker starts warm (3.3.2 patch 0017, with task-sdk patch 0002).

Real LocalExecutor, real worker processes. The workload runner (`BaseExecutor.run_workload`) is replaced before
`start()` (workers inherit the replacement) by one that forks a child the way the task SDK's supervisor forks a
task process, and in that child does what a task process does first: it builds its comms decoder
(`CommsDecoder[ToTask, ToSupervisor]`) and needs the modules every DAG file parse and task run import. The child
reports how many pydantic TypeAdapters building the decoder cost and which of those modules it did not inherit.

On unpatched 3.3.2 (workers forked from the scheduler) and with 0008's zygote alone, every task process builds
two `TypeAdapter(ToTask)`s and imports those modules itself, onto pages it copies.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import sys
import time
import uuid

import psutil
import pytest
from airflow.executors import workloads
from airflow.executors.base_executor import BaseExecutor
from airflow.executors.local_executor import LocalExecutor
from airflow.utils.state import TaskInstanceState

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="fork")

TIMEOUT = 120.0

# Imported by every task process after its fork on 3.3.2 whatever its DAG (the dags-folder bundle, Jinja's
# extensions for templates, the decorator base TaskFlow DAGs use), and, where the standard provider is installed,
# the operator most DAGs use.
EXPECTED_INHERITED = [
    "airflow.dag_processing.bundles.local",
    "jinja2.ext",
    "airflow.sdk.bases.decorator",
]
try:
    if importlib.util.find_spec("airflow.providers.standard.operators.python") is not None:
        EXPECTED_INHERITED.append("airflow.providers.standard.operators.python")
except ModuleNotFoundError:  # no airflow.providers.standard at all
    pass


def make_workload(task_id: str) -> workloads.ExecuteTask:
    return workloads.ExecuteTask(
        token="",
        ti=workloads.TaskInstance(
            id=uuid.uuid4(),
            dag_version_id=uuid.uuid4(),
            task_id=task_id,
            dag_id="local_executor_task_process_warm",
            run_id="manual__1",
            try_number=1,
            pool_slots=1,
            queue="default",
            priority_weight=1,
        ),
        dag_rel_path="local_executor_task_process_warm.py",
        bundle_info=workloads.BundleInfo(name="dags-folder"),
        log_path=None,
    )


def wait_for(predicate, timeout: float = TIMEOUT, step=None, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if step:
            step()
        if predicate():
            return True
        time.sleep(interval)
    return False


@pytest.fixture
def cleanup():
    yield
    for proc in psutil.Process().children(recursive=True):
        try:
            proc.kill()
        except psutil.Error:
            pass


@pytest.fixture
def task_process_report(monkeypatch, tmp_path):
    """Each workload forks a "task process" that writes `<task_id>.json`: adapters built, modules missing."""

    def run(workload, **kwargs):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                import socket

                import structlog
                from airflow.sdk.execution_time import comms

                missing = [m for m in EXPECTED_INHERITED if m not in sys.modules]
                built: list[str] = []
                real = comms.TypeAdapter

                class Counting(real):  # type: ignore[misc, valid-type]
                    def __init__(self, *args, **kw):
                        built.append(repr(args[0] if args else kw.get("type")))
                        super().__init__(*args, **kw)

                comms.TypeAdapter = Counting
                a, b = socket.socketpair()
                comms.CommsDecoder[comms.ToTask, comms.ToSupervisor](log=structlog.get_logger(), socket=a)
                report = {"missing": missing, "adapters_built": len(built)}
                (tmp_path / f"{workload.ti.task_id}.json").write_text(json.dumps(report))
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        return os.waitstatus_to_exitcode(status)

    monkeypatch.setattr(BaseExecutor, "run_workload", staticmethod(run))
    return tmp_path


def run_tasks(ex: LocalExecutor, session, task_ids) -> None:
    batch = [make_workload(t) for t in task_ids]
    for w in batch:
        ex.queue_workload(w, session=session)
    events: dict = {}

    def step():
        ex.heartbeat()
        events.update(ex.get_event_buffer())

    keys = {w.ti.key for w in batch}
    assert wait_for(lambda: keys <= set(events), step=step), f"not finished: {events}"
    assert {events[k][0] for k in keys} == {TaskInstanceState.SUCCESS}


def stop(executor: LocalExecutor) -> None:
    def expired(*_):
        raise TimeoutError(f"LocalExecutor.end() did not return within {TIMEOUT}s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(int(TIMEOUT))
    try:
        executor.end()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_task_processes_inherit_the_decoder_adapter_and_their_first_imports(
    task_process_report, cleanup, session
):
    not_yet = [m for m in EXPECTED_INHERITED if m not in sys.modules]
    assert not_yet, "this test process imported them all already: the check below could not fail"

    ex = LocalExecutor(parallelism=2)
    ex.start()
    try:
        run_tasks(ex, session, ["first", "second", "third"])
    finally:
        stop(ex)

    reports = {t: json.loads((task_process_report / f"{t}.json").read_text()) for t in ("first", "second", "third")}
    for task_id, report in reports.items():
        assert report["adapters_built"] == 0, (
            f"{task_id}: its comms decoder built {report['adapters_built']} TypeAdapter(s) in the task process"
        )
        assert report["missing"] == [], f"{task_id}: had to import after the fork: {report['missing']}"
