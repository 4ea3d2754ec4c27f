"""providers/celery 0001: the worker freezes its heap before every prefork pool fork and never unfreezes it.

Celery sends ``worker_before_create_process`` in the worker's main process right before it forks any pool
process (the initial pool, a recycled one, one added by --autoscale, one replacing a crashed one). The real
worker with recycled pool processes is tests/e2e/test_celery_provider_memory.py.
"""

from __future__ import annotations

import gc
import weakref

import pytest


@pytest.fixture
def unfrozen():
    gc.unfreeze()
    yield
    gc.unfreeze()


class _Cycle:
    def __init__(self):
        self.me = self


def test_pool_fork_freezes_live_objects_and_collects_garbage_first(unfrozen):
    from celery.signals import worker_before_create_process

    from airflow.providers.celery.executors import celery_executor_utils  # noqa: F401  (connects receivers)

    live = [_Cycle() for _ in range(1000)]
    garbage = _Cycle()
    dead = weakref.ref(garbage)
    del garbage
    assert gc.get_freeze_count() == 0

    worker_before_create_process.send(sender=None)

    assert gc.get_freeze_count() >= len(live)
    assert dead() is None, "cyclic garbage was frozen instead of collected before the fork"


def test_worker_ready_keeps_the_heap_frozen(unfrozen):
    from celery.signals import worker_before_create_process, worker_ready

    from airflow.providers.celery.executors import celery_executor_utils  # noqa: F401

    worker_before_create_process.send(sender=None)
    frozen = gc.get_freeze_count()
    assert frozen > 0

    worker_ready.send(sender=None)

    assert gc.get_freeze_count() == frozen


def test_every_later_fork_freezes_what_was_allocated_since(unfrozen):
    from celery.signals import worker_before_create_process

    from airflow.providers.celery.executors import celery_executor_utils  # noqa: F401

    worker_before_create_process.send(sender=None)  # the initial pool
    first = gc.get_freeze_count()
    grown = [_Cycle() for _ in range(5000)]  # the worker's heap grows while it runs tasks

    worker_before_create_process.send(sender=None)  # a recycled pool process

    assert gc.get_freeze_count() >= first + len(grown)
    # nothing young is left for celery's own gc.collect() right before the fork (celery#2927) to walk
    assert gc.get_count()[2] == 0
