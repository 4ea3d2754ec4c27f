"""task-sdk 0001 (apache/airflow#70117): a supervisor whose task process was reaped by something else exits.

psutil's ``Process.wait(timeout=0)`` returns ``None`` -- not an exit code, and without raising -- when the process
is gone but is no longer the caller's child to reap. ``_check_subprocess_exit`` stored that ``None`` as "still
running", so the supervisor's monitor loop waited (and heart-beat) for a dead task process forever. Here the
kernel reaps the child itself (SIGCHLD set to SIG_IGN, as when the worker inherits that from whatever started it),
with a real forked child.
"""

from __future__ import annotations

import os
import signal
import time
import uuid

import psutil
import pytest


def _exit_at_once() -> None:
    os._exit(3)


@pytest.fixture
def sigchld_ignored():
    old = signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    yield
    signal.signal(signal.SIGCHLD, old)


def _wait_gone(pid: int) -> None:
    # waits for a state (the kernel reaped the child), it does not assert on time
    for _ in range(1200):
        if not psutil.pid_exists(pid):
            return
        time.sleep(0.05)
    raise AssertionError(f"child {pid} still exists")


def test_exit_of_a_child_reaped_elsewhere_is_noticed(sigchld_ignored):
    from airflow.sdk.execution_time.supervisor import WatchedSubprocess

    proc = WatchedSubprocess.start(id=uuid.uuid4(), target=_exit_at_once)
    _wait_gone(proc.pid)

    assert proc._check_subprocess_exit() == -1
    # and it stays exited: the monitor loop's condition is on _exit_code
    assert proc._exit_code == -1
    assert proc._check_subprocess_exit() == -1


def test_exit_code_of_an_own_child_is_unchanged():
    from airflow.sdk.execution_time.supervisor import WatchedSubprocess

    proc = WatchedSubprocess.start(id=uuid.uuid4(), target=_exit_at_once)
    code = None
    for _ in range(1200):
        code = proc._check_subprocess_exit()
        if code is not None:
            break
        time.sleep(0.05)
    assert code == 3
