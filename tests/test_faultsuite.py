"""The fault suite's judging (no stack): task-try files -> doubled runs, build probing, verdicts."""

from __future__ import annotations

from pathlib import Path

from memseries import faultsuite as fs


def _write(track: Path, run: str, lines: list[str], map_index: int = 0) -> None:
    (track / f"{run}.work.{map_index}.log").write_text("".join(line + "\n" for line in lines))


def test_sequential_tries_are_not_doubled(tmp_path):
    _write(tmp_path, "faults__busy__1", ["start 1 10 100.0", "hb 1 10 101.0", "hb 1 10 105.0",
                                         "start 2 11 130.0", "hb 2 11 131.0", "end 2 11 132.0"])
    assert fs.doubled(tmp_path, ["faults__busy__1"]) == []
    tries = fs.track_tries(tmp_path, ["faults__busy__1"])[("faults__busy__1", "work", "0")]
    assert sorted(tries) == [1, 2] and tries[2]["end"] and not tries[1]["end"]


def test_a_retry_beside_the_orphaned_try_is_doubled(tmp_path):
    # the first try's process kept running (its worker was SIGKILLed) while the retry ran
    _write(tmp_path, "faults__busy__1", ["start 1 10 100.0", "start 2 11 120.0", "hb 1 10 121.0", "end 2 11 125.0",
                                         "end 1 10 130.0"])
    _write(tmp_path, "faults__busy__1", ["start 1 12 100.0", "end 1 12 101.0"], map_index=1)
    bad = fs.doubled(tmp_path, ["faults__busy__1"])
    assert bad == ["faults__busy__1.work.0: try 1 (pid 10) and try 2 (pid 11) overlap"]


def test_one_try_in_two_processes_is_doubled(tmp_path):
    _write(tmp_path, "faults__sched__1", ["start 1 10 100.0", "start 1 20 102.0", "end 1 10 110.0",
                                          "end 1 20 112.0"])
    assert len(fs.doubled(tmp_path, ["faults__sched__1"])) == 1
    assert fs.doubled(tmp_path, ["faults__other__1"]) == []


def test_build_features_probe_files(tmp_path):
    sp = tmp_path / "lib" / "python3.11" / "site-packages" / "airflow"
    (sp / "executors").mkdir(parents=True)
    (sp / "config_templates").mkdir()
    (sp / "config_templates" / "config.yml").write_text("dag_processor:\n  options:\n    refresh_interval:\n")
    plain = fs.BuildFeatures.probe(tmp_path)
    assert plain == fs.BuildFeatures(local_zygote=False, preload_modules=False)
    assert "local_zygote" in plain.missing("idle-worker-kill")
    assert "preload_modules" in plain.missing("dagproc-sigterm-preload")
    assert plain.missing("busy-worker-kill") is None
    (sp / "executors" / "local_zygote.py").write_text("")
    (sp / "config_templates" / "config.yml").write_text("dag_processor:\n  options:\n    preload_modules:\n")
    assert fs.BuildFeatures.probe(tmp_path) == fs.BuildFeatures(local_zygote=True, preload_modules=True)
    assert fs.BuildFeatures.probe(tmp_path / "nowhere") == fs.BuildFeatures(False, False)


def test_outcome_verdicts():
    ok = fs.Outcome("1 busy worker SIGKILL", "3.3.2", ok=4, retried=1, recovery_s=40.2, stop_s=3.1)
    assert ok.problems() == []
    assert ok.row()[-1] == "ok"
    bad = fs.Outcome("2 idle worker SIGKILL", "3.3.2", ok=0, lost=2, stop_s=12.0,
                     notes=["FAIL: pool wedged after SIGKILL of idle worker 7: run r did not finish", "info"])
    assert bad.problems() == [
        "2 task instance(s) lost (not success at the end)",
        "the stack took 12.0s to stop (> 10s)",
        "FAIL: pool wedged after SIGKILL of idle worker 7: run r did not finish",
    ]
    assert fs.Outcome("x", "b", skipped="why").row()[2] == "skipped"


def test_versioned_dag_changes_only_its_version(tmp_path):
    fs.write_versioned_dag(tmp_path, 1)
    first = (tmp_path / f"{fs.VERSIONED_DAG}.py").read_text()
    fs.write_versioned_dag(tmp_path, 2)
    second = (tmp_path / f"{fs.VERSIONED_DAG}.py").read_text()
    assert f'dag_id="{fs.VERSIONED_DAG}"' in first and "schedule=timedelta(minutes=1)" in first
    assert first.replace("version 1", "version 2") == second
    assert [p.name for p in tmp_path.iterdir()] == [f"{fs.VERSIONED_DAG}.py"]
    fs.write_versioned_dag(tmp_path, 3, scheduled=False)  # the end of a run: no new runs, no pause
    last = (tmp_path / f"{fs.VERSIONED_DAG}.py").read_text()
    assert "schedule=None" in last and "version 3" in last


def test_verdict_names_who_exited_and_was_restarted():
    o = fs.Outcome("4 PostgreSQL restart", "3.3.2", ok=5, exited=["scheduler (1)"])
    assert o.problems() == []
    assert o.row()[-1] == "ok (exited on the fault, restarted by the harness: scheduler (1))"


class _FakeStack:
    """What Supervisor uses of a Stack: procs, logfiles, component_argv, start_component."""

    def __init__(self, tmp_path: Path, script: str) -> None:
        import subprocess
        self.tmp = tmp_path
        self.logfiles = {"scheduler": tmp_path / "scheduler.log"}
        self.logfiles["scheduler"].write_text("old run: OperationalError long ago\n")
        self.started: list[list[str]] = []
        self.procs = {"scheduler": subprocess.Popen(["sh", "-c", script])}
        self.procs["scheduler"].wait()

    def component_argv(self, name):
        return ["sleep", "30"]

    def start_component(self, comp):
        import subprocess
        self.started.append(comp.argv)
        self.procs[comp.name] = subprocess.Popen(comp.argv)
        return self.procs[comp.name]


def test_supervisor_restarts_an_exit_on_a_database_error(tmp_path):
    st = _FakeStack(tmp_path, "exit 1")
    out = fs.Outcome("4 PostgreSQL restart", "b")
    sup = fs.Supervisor(st, out)
    with open(st.logfiles["scheduler"], "a") as f:
        f.write("psycopg2.OperationalError: server closed the connection unexpectedly\n")
    try:
        assert sup.poll() == ["scheduler"]
        assert st.started == [["sleep", "30"]] and out.exited == ["scheduler (1)"]
        assert out.problems() == [], out.notes
        assert "server closed the connection unexpectedly" in out.notes[0]
        assert sup.poll() == []
    finally:
        st.procs["scheduler"].kill()


def test_supervisor_fails_an_exit_without_a_database_error(tmp_path):
    # the log's old OperationalError (before supervision began) does not count
    st = _FakeStack(tmp_path, "exit 3")
    out = fs.Outcome("4 PostgreSQL restart", "b")
    sup = fs.Supervisor(st, out)
    try:
        sup.poll()
        assert out.exited == ["scheduler (3)"]
        assert out.problems() and "without a database error" in out.problems()[0]
    finally:
        st.procs["scheduler"].kill()


def test_supervisor_stops_a_crash_loop(tmp_path):
    import pytest

    st = _FakeStack(tmp_path, "exit 1")
    st.component_argv = lambda name: ["sh", "-c", "echo 'OperationalError: x' >> " + str(st.logfiles["scheduler"])
                                      + "; exit 1"]
    out = fs.Outcome("4 PostgreSQL restart", "b")
    sup = fs.Supervisor(st, out)
    with open(st.logfiles["scheduler"], "a") as f:
        f.write("OperationalError: y\n")
    with pytest.raises(fs.StackError, match="crash loop"):
        for _ in range(fs.MAX_RESTARTS + 2):
            sup.poll()
            st.procs["scheduler"].wait()
    assert any("crash loop" in p for p in out.problems())


def test_mixed_run_goes_on_after_a_fault_fails_and_restarts_what_exited(tmp_path, monkeypatch):
    # a fault whose wait found a component dead (StackError) is a FAIL row of that fault, not the end of the run;
    # the component is restarted by the mixed run's Supervisor, judged by its log
    import subprocess
    import time

    st = _FakeStack(tmp_path, "exit 0")
    st.procs["scheduler"] = subprocess.Popen(["sleep", "30"])  # running when the run begins
    st.home = tmp_path
    (tmp_path / "logs").mkdir()
    (tmp_path / "dags").mkdir()
    st.dags_dir = tmp_path / "dags"
    st.track = tmp_path
    st.query = lambda sql, params=(): ([(0,)] if "count(*)" in sql else [("None",)] if "timetable_summary" in sql
                                       else [])
    st.set_paused = lambda dag_id, paused=True: None
    calls = []

    def busy(st_, build):
        calls.append("1")
        with open(st.logfiles["scheduler"], "a") as f:
            f.write("sqlalchemy.exc.OperationalError: connection to server at 127.0.0.1 failed\n")
        st.procs["scheduler"].kill()
        st.procs["scheduler"].wait()
        raise fs.StackError("[b] scheduler exited with -9:\nlog tail")

    def fine(num):
        def f(st_, build):
            calls.append(num)
            return fs.Outcome(num, build, ok=4)
        return f

    monkeypatch.setattr(fs, "busy_worker_kill", busy)
    monkeypatch.setattr(fs, "scheduler_kill_restart", fine("3"))
    monkeypatch.setattr(fs, "postgres_restart", fine("4"))
    monkeypatch.setattr(fs, "parse_process_kill", fine("5a"))
    real_sleep = time.sleep
    monkeypatch.setattr(fs.time, "sleep", lambda s: real_sleep(0.05))
    try:
        out = fs.two_schedulers(st, "b", duration=0.4, fault_every=0.01)
    finally:
        for p in st.procs.values():
            p.kill()
        monkeypatch.undo()
    assert calls[:4] == ["1", "3", "4", "5a"], calls
    assert out.exited and out.exited[0] == "scheduler (-9)"
    assert "FAIL: [1 busy worker SIGKILL] [b] scheduler exited with -9:" in out.problems()
    assert not any("without a database error" in p for p in out.problems())
    assert out.ok == 4 * (len(calls) - calls.count("1"))
    assert isinstance(st.procs["scheduler"], subprocess.Popen) and st.started


def test_the_worker_running_a_ti_names_its_scheduler():
    # scenario 3 on two schedulers kills the scheduler whose worker runs the run's task
    from memseries.stack.procs import ProcInfo

    ti = "01a22deb-d1e0-7cf5-b753-f33676b928c6"
    workers = [ProcInfo(10, "worker", "scheduler", "airflow worker -- LocalExecutor: <idle>", 1),
               ProcInfo(11, "worker", "scheduler-2", f"airflow worker -- LocalExecutor: {ti}", 2)]
    assert fs.worker_info(workers, ti).component == "scheduler-2"
    assert fs.worker_info(workers, ti.replace("-", "")).pid == 11
    assert fs.worker_info(workers[:1], ti) is None


def test_a_stale_transaction_names_the_processes_holding_its_connection():
    # the real case: a killed scheduler's connection, idle in transaction, kept open by its orphaned workers
    import os
    import socket
    from types import SimpleNamespace

    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        try:
            port = client.getsockname()[1]
            st = SimpleNamespace(query=lambda sql, params=(): [(port, 812.4, "SELECT slot_pool.id FROM slot_pool")])
            [note] = fs.stale_transactions(st)
        finally:
            client.close()
    assert note.startswith("DB connection idle in transaction for 812 s (last query 'SELECT slot_pool.id")
    assert f"held by {os.getpid()} " in note and f"(parent {os.getppid()})" in note
