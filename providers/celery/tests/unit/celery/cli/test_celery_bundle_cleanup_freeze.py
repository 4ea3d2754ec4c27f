"""providers/celery 0002: the stale-bundle cleanup helper is forked from a collected, frozen worker heap.

A real helper process is started through ``_run_stale_bundle_cleanup()`` (its loop replaced by one that reports
what it inherited and exits). The real worker is tests/e2e/test_celery_provider_memory.py.
"""

from __future__ import annotations

import gc
import os
import time

import pytest


@pytest.fixture
def unfrozen():
    gc.unfreeze()
    yield
    gc.unfreeze()


def _report(path):
    def main(check_interval):
        with open(path, "w") as f:
            f.write(f"{check_interval} {gc.get_freeze_count()}")

    return main


def test_helper_inherits_a_frozen_heap(unfrozen, monkeypatch, tmp_path):
    from airflow.providers.celery.cli import celery_command

    monkeypatch.setenv("AIRFLOW__DAG_PROCESSOR__STALE_BUNDLE_CLEANUP_INTERVAL", "3600")
    out = tmp_path / "helper"
    monkeypatch.setattr(celery_command, "_bundle_cleanup_main", _report(out))
    assert gc.get_freeze_count() == 0

    with celery_command._run_stale_bundle_cleanup():
        deadline = time.monotonic() + 60
        while not (out.exists() and out.read_text()) and time.monotonic() < deadline:
            time.sleep(0.1)

    interval, frozen = out.read_text().split()
    assert interval == "3600"
    assert int(frozen) > 0, "the helper was forked from an unfrozen heap"
    # the worker keeps what it shares with the helper frozen (the child's own count differs by what it freed)
    assert gc.get_freeze_count() >= int(frozen) * 0.9


def test_no_helper_no_freeze(unfrozen, monkeypatch):
    from airflow.providers.celery.cli import celery_command

    monkeypatch.setenv("AIRFLOW__DAG_PROCESSOR__STALE_BUNDLE_CLEANUP_INTERVAL", "0")
    with celery_command._run_stale_bundle_cleanup():
        pass
    assert gc.get_freeze_count() == 0
    assert os.getpid()  # nothing forked, nothing frozen
