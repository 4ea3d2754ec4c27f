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
