"""providers/celery 0003: the worker does its pool processes' first-use work once, before the pool forks.

A fresh interpreter plays the worker: it runs the provider's ``import_modules`` receiver (what ``airflow celery
worker`` runs before it forks its prefork pool; its heap is then frozen). A child forked from it then does what
every pool process does on its own after the fork: billiard's ``set_pdeathsig`` at start (cffi parses a C
declaration), the first Session of celery's database result backend (SQLAlchemy configures the mappers, and
Airflow's ``before_configured`` listener imports all its models), the task supervisor with its API client
(SSL context) and its per-task secrets-backend set-up (which imports the Connection class). Unpatched that
child imports ~100 modules and makes ~40 MB private; patched it imports nothing and stays within a few MB. The
real worker is measured by ``memseries bench celery --scenarios recycle,autoscale``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

MB = 1024 * 1024
#: what a pool process's first-use work may still make private (its own small allocations); unpatched ~40 MB
MAX_GROWTH = 10 * MB

WORKER = textwrap.dedent(
    """
    import gc, json, os, signal, sys

    def uss():
        with open("/proc/self/smaps_rollup", "rb") as f:
            return sum(
                int(line.split()[1]) * 1024
                for line in f.read().split(b"\\n")
                if line.startswith((b"Private_Clean:", b"Private_Dirty:"))
            )

    from airflow.providers.celery.executors import celery_executor_utils as utils

    utils.on_celery_import_modules()  # the worker, before its pool forks (it then freezes its heap)
    gc.collect()
    gc.freeze()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # a prefork pool process
        try:
            before, mods = uss(), set(sys.modules)
            import billiard.util
            from sqlalchemy.orm import configure_mappers

            billiard.util.set_pdeathsig(signal.SIGKILL)  # celery's process_initializer
            configure_mappers()  # the result backend's first Session
            try:
                import airflow.sdk.execution_time.supervisor as supervisor
                from airflow.sdk.api.client import Client
            except ImportError:  # Airflow 2: no task supervisor
                pass
            else:
                Client(base_url="http://localhost/execution/", token="").close()
                supervisor.ensure_secrets_backend_loaded()  # the supervisor, for every task it runs
            new = sorted(set(sys.modules) - mods)
            os.write(write, json.dumps({"growth": uss() - before, "modules": new}).encode())
        finally:
            os._exit(0)
    os.close(write)
    out = b""
    while chunk := os.read(read, 65536):
        out += chunk
    os.waitpid(pid, 0)
    print("RESULT " + out.decode())
    """
)


def _first_use_in_pool_process() -> dict:
    proc = subprocess.run([sys.executable, "-c", WORKER], capture_output=True, text=True, timeout=300)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"worker script failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return json.loads(lines[-1][len("RESULT ") :])


def test_pool_process_first_use_work_is_done_before_the_fork():
    res = _first_use_in_pool_process()
    # none: every import in a forked pool process compiles or loads a module into pages it shares with the
    # worker (the last one found, airflow.sdk.definitions.connection from the secrets-backend set-up, made
    # ~3.5 MB private on its own)
    assert res["modules"] == [], (
        f"a pool process imported {len(res['modules'])} modules on first use: {res['modules'][:20]}"
    )
    assert res["growth"] <= MAX_GROWTH, (
        f"a pool process's first-use work made {res['growth'] / MB:.1f} MB private (max {MAX_GROWTH / MB:.0f})"
    )


def test_prewarm_steps_are_best_effort(monkeypatch):
    from airflow.providers.celery.executors import celery_executor_utils as utils

    def broken():
        raise RuntimeError("boom")

    monkeypatch.setattr(utils, "_prewarm_orm_mappers", broken)
    utils._prewarm_pool_processes()  # logs at debug level and carries on with the other steps


def test_cleanup_helper_is_forked_after_the_prewarm(monkeypatch, tmp_path):
    """The stale-bundle cleanup helper is forked before celery starts: it must inherit the pre-warmed heap too,
    or the worker's pre-warming afterwards writes to the pages it shares and makes them the helper's."""
    import gc

    from airflow.providers.celery.cli import celery_command
    from airflow.providers.celery.executors import celery_executor_utils as utils

    calls = []
    monkeypatch.setenv("AIRFLOW__DAG_PROCESSOR__STALE_BUNDLE_CLEANUP_INTERVAL", "3600")
    monkeypatch.setattr(utils, "_prewarm_pool_processes", lambda: calls.append("prewarm"))

    class FakeProcess:
        def __init__(self, target, args):
            pass

        def start(self):
            calls.append("fork")

        def terminate(self):
            pass

    monkeypatch.setattr(celery_command, "Process", FakeProcess)
    try:
        with celery_command._run_stale_bundle_cleanup():
            pass
    finally:
        gc.unfreeze()
    assert calls == ["prewarm", "fork"]
