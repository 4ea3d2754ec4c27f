"""providers/celery 0003: the worker does every pool process's first-task work once, before the pool forks.

A real fork from a worker-like process (the provider's import_modules receiver run, heap frozen as before a pool
fork): the child then does what a pool process does on its first task (decode a workload, import the task
supervisor, build the execution API client) and must not grow by more than a few MB of private memory.
"""

from __future__ import annotations

import gc
import os

import pytest

MB = 1024 * 1024
#: unpatched: ~26 MB (the supervisor import's copy-on-write, the client's SSL context, the decoder)
MAX_FIRST_TASK_GROWTH = 8 * MB


def _uss() -> int:
    with open("/proc/self/smaps_rollup", "rb") as f:
        data = f.read()
    return sum(
        int(line.split()[1]) * 1024
        for line in data.split(b"\n")
        if line.startswith((b"Private_Clean:", b"Private_Dirty:"))
    )


@pytest.fixture
def unfrozen():
    gc.unfreeze()
    yield
    gc.unfreeze()


def test_workload_decoder_is_built_once():
    from airflow.providers.celery.executors import celery_executor_utils as utils

    assert utils._workload_decoder() is utils._workload_decoder()


def test_pool_process_first_task_work_is_shared(unfrozen):
    from airflow.providers.celery.executors import celery_executor_utils as utils

    utils.on_celery_import_modules()  # what the worker runs before it forks its pool (and freezes)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # a pool process
        try:
            before = _uss()
            from pydantic import TypeAdapter

            from airflow.executors.workloads import ExecutorWorkload
            from airflow.sdk.api.client import Client
            from airflow.sdk.execution_time import supervisor  # noqa: F401

            decoder = getattr(utils, "_workload_decoder", None)
            decoder() if decoder else TypeAdapter[ExecutorWorkload](ExecutorWorkload)
            Client(base_url="http://localhost/execution/", token="").close()
            gc.collect()
            os.write(write, str(_uss() - before).encode())
        finally:
            os._exit(0)
    os.close(write)
    out = b""
    while chunk := os.read(read, 4096):
        out += chunk
    os.close(read)
    os.waitpid(pid, 0)
    growth = int(out)
    assert growth <= MAX_FIRST_TASK_GROWTH, f"a pool process's first task made {growth / MB:.1f} MB private"
