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
