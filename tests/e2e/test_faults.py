"""Fault suite (issue 17): real api-server, dag-processor, scheduler + LocalExecutor on PostgreSQL, one fault each.

One stack is shared by the module (its start and migration are the expensive part); the scenarios run in file
order and each one triggers its own runs of `memseries_faults` and judges only those, from the metadata DB and the
files every task try writes (see memseries.faultsuite): every TI ends in success (retries allowed), no TI has two
tries running at once, no try queued longer than task_queued_timeout, no deadlock error in the logs. The last test
stops the whole stack and requires it gone within 10 s.

Scenarios the build cannot pass by construction are skipped with the missing behaviour named, decided by probing
the venv (memseries.faultsuite.BuildFeatures): 2 (idle worker SIGKILL) needs the lexec patches, 5b needs
[dag_processor] preload_modules; 3 (scheduler SIGKILL) is an expected failure on a build without the lexec patches
(unpatched 3.3.2 runs a retry beside the orphaned try). In 4 (PostgreSQL down 6 s) the scheduler and the
dag-processor exit on the outage, upstream's way on both builds; the harness restarts them as systemd/Kubernetes
would and requires a database error in their logs (memseries.faultsuite.Supervisor). The idle-worker scenario runs
after the others because on a build without the fix it wedges the pool. `memseries bench faults` runs the same scenarios on patched and unpatched 3.3.2 side by side.
"""

from __future__ import annotations

import pytest
from memseries import faultsuite as fs
from memseries.stack import postgres_unreachable, tail


@pytest.fixture(scope="module")
def features(e2e_venv) -> fs.BuildFeatures:
    return fs.BuildFeatures.probe(e2e_venv)


@pytest.fixture(scope="module")
def pg_cluster(request):
    cluster = fs.pg_cluster()
    # whatever a scenario does to the server, it runs again when the module is done
    request.addfinalizer(lambda: fs.ensure_pg_running(cluster))
    return cluster


@pytest.fixture(scope="module")
def fstack(e2e_venv, pg_cluster, tmp_path_factory):
    if reason := postgres_unreachable():
        pytest.skip(reason)
    track = tmp_path_factory.mktemp("faults-track")
    st = fs.FaultStack(fs.fault_config(e2e_venv, "faults", track), log=print)
    st.track = track  # type: ignore[attr-defined]
    try:
        st.start()
        st.wait_for(lambda: bool(st.query("SELECT 1 FROM dag WHERE dag_id = %s AND NOT is_paused",
                                          (fs.FAULT_DAG,))), 240, f"{fs.FAULT_DAG} parsed")
        yield st
    except BaseException:
        _dump(st)
        raise
    finally:
        if not st.stopped:
            st.stop()


def _dump(st) -> None:
    for name, path in st.logfiles.items():
        print(f"----- {name} log (tail) -----\n{tail(path, 40)}")


def _check(st, outcome: fs.Outcome) -> None:
    print(dict(zip(fs.HEADERS, outcome.row())))
    for n in outcome.notes:
        print("  ", n)
    if outcome.skipped:
        pytest.skip(outcome.skipped)
    problems = outcome.problems()
    if problems:
        _dump(st)
    assert not problems, f"{outcome.scenario}: " + "; ".join(problems)
    assert outcome.ok > 0


def test_1_sigkill_busy_worker(fstack):
    _check(fstack, fs.busy_worker_kill(fstack, "under test"))


def test_3_sigkill_scheduler_then_restart(fstack, features, request):
    if not features.local_zygote:
        # Unpatched 3.3.2's behaviour, not the harness's: after the SIGKILL the new scheduler queued a retry while
        # the dead scheduler's LocalExecutor (one task queue shared by its workers) still ran try 1: tries 1 and 2
        # of a TI overlapped (2026-11-30: 2 of 2 runs of unpatched 3.3.2, and the run before). The patched build
        # (0007: one channel per worker, a worker stops at its channel's EOF) passed it in 4 of 4 runs that day,
        # so no mark there: a failure on it is a regression.
        request.applymarker(pytest.mark.xfail(
            strict=False, reason="unpatched 3.3.2: a retry ran beside the try a SIGKILLed scheduler's worker kept "
            "running (tries overlap); the lexec patches (3.3.2 0007) fix it"))
    _check(fstack, fs.scheduler_kill_restart(fstack, "under test"))


def test_4_postgres_restart(fstack, pg_cluster):
    # A component may exit on the outage (upstream's scheduler and dag-processor let a database error end the
    # process, unpatched 3.3.2 as well; whether they do depends on timing): the scenario restarts it as a process
    # supervisor would and requires a database error in its log, no crash loop, nothing lost or doubled.
    _check(fstack, fs.postgres_restart(fstack, "under test", pg_cluster))


def test_5a_sigkill_parse_process(fstack):
    _check(fstack, fs.parse_process_kill(fstack, "under test"))


def test_2_sigkill_idle_workers_in_turn(fstack, features):
    if reason := features.missing("idle-worker-kill"):
        pytest.skip(reason)
    _check(fstack, fs.idle_worker_kill(fstack, "under test"))


def test_5b_sigterm_dag_processor_during_slow_preload(fstack, features):
    if reason := features.missing("dagproc-sigterm-preload"):
        pytest.skip(reason)
    outcome = fs.dagproc_sigterm_preload(fstack, "under test", features)
    _check(fstack, outcome)
    assert outcome.stop_s is not None and outcome.stop_s <= fs.STOP_WITHIN


def test_whole_stack_stops_within_10s(fstack):
    seconds, left = fs.timed_stop(fstack)
    print(f"stack stopped in {seconds:.1f}s; SIGKILLed after the grace: {fstack.stop_killed or 'none'}")
    assert not left, f"processes survived the stack: {left}"
    assert seconds <= fs.STOP_WITHIN, f"the stack took {seconds:.1f}s to stop"
