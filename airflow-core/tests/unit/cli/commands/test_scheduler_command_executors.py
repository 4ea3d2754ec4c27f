"""`airflow scheduler` builds the configured executors and hands them to SchedulerJobRunner (patch 0004, #60766).

The command function runs for real (one scheduler loop, the configured LocalExecutor started and ended);
spies only record what the command built and what the runner was given. A real `airflow scheduler
--num-runs 1` process checks the CLI path end to end. Running a task through the scheduler with a real
LocalExecutor and api-server is left to the end-to-end tests.
"""

from __future__ import annotations

import os
import subprocess
import sys
from argparse import Namespace

import pytest
from airflow.cli.commands import scheduler_command
from airflow.executors.executor_loader import ExecutorLoader
from airflow.executors.local_executor import LocalExecutor
from airflow.jobs.job import Job
from airflow.jobs.scheduler_job_runner import SchedulerJobRunner
from sqlalchemy import select


@pytest.fixture
def spies(monkeypatch):
    built: list[list] = []
    runners: list[tuple[SchedulerJobRunner, dict]] = []
    real_init_executors = ExecutorLoader.init_executors

    def init_executors(*args, **kwargs):
        executors = real_init_executors(*args, **kwargs)
        built.append(executors)
        return executors

    class RecordingSchedulerJobRunner(SchedulerJobRunner):
        def __init__(self, *args, **kwargs):
            runners.append((self, kwargs))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(ExecutorLoader, "init_executors", init_executors)
    monkeypatch.setattr(scheduler_command, "SchedulerJobRunner", RecordingSchedulerJobRunner)
    return built, runners


def test_command_builds_executors_and_passes_them(clear_db, spies):
    built, runners = spies
    scheduler_command._run_scheduler_job(Namespace(num_runs=1, skip_serve_logs=True))

    assert len(runners) == 1
    runner, kwargs = runners[0]
    assert "executors" in kwargs, "the command must hand the executors to the runner"
    assert len(built) == 1, "executors are built once, by the command, not again by the runner or the job"
    (executors,) = built
    assert [type(e) for e in executors] == [LocalExecutor]
    assert list(kwargs["executors"]) == executors
    assert runner.executors == executors
    assert runner.executor is executors[0]
    # The scheduler loop really ran with them: _execute started each for this job.
    assert runner.job.state == "success"
    assert all(e.job_id == runner.job.id for e in executors)


def test_airflow_scheduler_cli_runs_a_loop(clear_db, session):
    proc = subprocess.run(
        [sys.executable, "-m", "airflow", "scheduler", "--num-runs", "1", "--skip-serve-logs"],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False"},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    jobs = session.scalars(select(Job).where(Job.job_type == "SchedulerJob")).all()
    assert [j.state for j in jobs] == ["success"]
