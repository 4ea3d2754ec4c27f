"""A Job neither takes, loads nor caches executors; SchedulerJobRunner is handed them (patch 0004, #60766).

- The dag-processor and the triggerer run their real JobRunner in a FRESH interpreter (this venv's python,
  this session's database, the environment passed through) and report which `airflow.executors.*` modules
  that process ends up with. Allowed: the `airflow.executors` package, plus, for the triggerer only,
  `airflow.executors.workloads` -- the pydantic schema of the RunTrigger messages the triggerer exchanges with
  its async runner, which its own message models reference at class-definition time. No loader, no executor
  class, no executor instance.
- A real `airflow scheduler --num-runs 1` process (airflow's own CLI entry point, with spies recording what
  the command builds and hands over) builds the configured executors once, hands them to its
  SchedulerJobRunner, which starts them for its job; the Job itself loads none.
- SchedulerJobRunner with explicit executors uses exactly those (a real one-loop scheduler run starts them
  and stamps them with the job id); without, it loads the configured ones itself, first = default.
- The deprecated `Job.executor(s)` aliases (RemovedInAirflow4Warning, reported at the caller's line) read and
  set the executors of the SchedulerJobRunner running that job; executors handed to a Job before it has a
  runner (3.1.3's `Job(executor)`, positional or by keyword, `Job(executors=...)`, the setters) are used by
  the runner created for it. Reading them raises AttributeError for any other job.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings

import pytest
from airflow.exceptions import RemovedInAirflow4Warning
from airflow.executors.executor_loader import ExecutorLoader
from airflow.executors.executor_utils import ExecutorName
from airflow.executors.local_executor import LocalExecutor
from airflow.jobs.job import Job, run_job
from airflow.jobs.scheduler_job_runner import SchedulerJobRunner
from airflow.jobs.triggerer_job_runner import TriggererJobRunner

LOCAL = "airflow.executors.local_executor.LocalExecutor"

DAG_FILE = """
from datetime import datetime
from airflow.sdk import DAG
from airflow.providers.standard.operators.empty import EmptyOperator

with DAG("job_without_executors", start_date=datetime(2025, 1, 1), schedule=None):
    EmptyOperator(task_id="t")
"""

DAG_PROCESSOR_SCRIPT = """
import json, sys
from airflow.dag_processing.manager import DagFileProcessorManager
from airflow.jobs.dag_processor_job_runner import DagProcessorJobRunner
from airflow.jobs.job import Job, run_job

job = Job()
runner = DagProcessorJobRunner(job=job, processor=DagFileProcessorManager(max_runs=1))
run_job(job=job, execute_callable=runner._execute)

from sqlalchemy import select
from airflow.models.serialized_dag import SerializedDagModel
from airflow.utils.session import create_session
with create_session() as session:
    parsed = session.scalar(
        select(SerializedDagModel.dag_id).where(SerializedDagModel.dag_id == "job_without_executors")
    ) is not None
print(json.dumps({
    "executor_modules": sorted(m for m in sys.modules if m.startswith("airflow.executors")),
    "job_state": str(job.state), "job_type": job.job_type, "parsed": parsed,
}))
"""

TRIGGERER_SCRIPT = """
import json, sys, threading, time
from airflow.jobs.job import Job, run_job
from airflow.jobs.triggerer_job_runner import TriggererJobRunner

job = Job(heartrate=1)
runner = TriggererJobRunner(job=job, capacity=10)
loops = []

def stop_when_steady():
    # Let the supervisor start its async runner subprocess and go round its DB loop a few times.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        tr = getattr(runner, "trigger_runner", None)
        if tr is not None and job.latest_heartbeat is not None and job.id is not None:
            loops.append(1)
            if len(loops) >= 30:
                break
        time.sleep(0.1)
    runner.trigger_runner.stop = True

threading.Thread(target=stop_when_steady, daemon=True).start()
run_job(job=job, execute_callable=runner._execute)
print(json.dumps({
    "executor_modules": sorted(m for m in sys.modules if m.startswith("airflow.executors")),
    "job_state": str(job.state), "job_type": job.job_type,
}))
"""


SCHEDULER_CLI_SCRIPT = """
import atexit, json, os, sys, warnings
from airflow.executors.executor_loader import ExecutorLoader
from airflow.jobs.scheduler_job_runner import SchedulerJobRunner

seen = {"init_executors": 0, "runners": []}
real_init_executors = ExecutorLoader.init_executors.__func__
real_runner_init = SchedulerJobRunner.__init__

def init_executors(cls, *args, **kwargs):
    seen["init_executors"] += 1
    return real_init_executors(cls, *args, **kwargs)

def runner_init(self, *args, **kwargs):
    real_runner_init(self, *args, **kwargs)
    seen["runners"].append((self, kwargs.get("executors")))

ExecutorLoader.init_executors = classmethod(init_executors)
SchedulerJobRunner.__init__ = runner_init

@atexit.register
def report():
    (runner, handed), = seen["runners"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        alias = runner.job.executors
    print(json.dumps({
        "init_executors": seen["init_executors"],
        "handed": [type(e).__name__ for e in handed] if handed is not None else None,
        "same_objects": handed is not None and all(a is b for a, b in zip(handed, runner.executors)),
        "started_for_job": [e.job_id == runner.job.id for e in runner.executors],
        "job_state": str(runner.job.state),
        "alias_is_runners": alias is runner.executors,
        "alias_warning": [w.category.__name__ for w in caught],
    }), flush=True)

from airflow.__main__ import main
sys.argv = ["airflow", "scheduler", "--num-runs", "1", "--skip-serve-logs"]
main()
"""


def run_fresh(script: str, env_extra: dict | None = None, timeout: float = 240) -> dict:
    """Run `script` in a fresh interpreter of this venv against this session's DB; return its JSON line."""
    env = {**os.environ, **(env_extra or {})}
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        check=False,
        env=env,
        timeout=timeout,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert proc.returncode == 0 and lines, (
        f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    )
    return json.loads(lines[-1])


class TestComponentsLoadNoExecutor:
    def test_dag_processor_job_loads_no_executor_module(self, clear_db, tmp_path):
        dags = tmp_path / "dags"
        dags.mkdir()
        (dags / "job_without_executors_dag.py").write_text(DAG_FILE)
        out = run_fresh(DAG_PROCESSOR_SCRIPT, {"AIRFLOW__CORE__DAGS_FOLDER": str(dags)})
        assert out["job_type"] == "DagProcessorJob"
        assert out["job_state"] == "success"
        assert out["parsed"], "the dag-processor really ran: it parsed and serialized the DAG"
        assert set(out["executor_modules"]) <= {"airflow.executors"}, out["executor_modules"]

    def test_triggerer_job_loads_no_executor_module(self, clear_db):
        out = run_fresh(TRIGGERER_SCRIPT)
        assert out["job_type"] == "TriggererJob"
        assert out["job_state"] == "success"
        assert set(out["executor_modules"]) <= {"airflow.executors", "airflow.executors.workloads"}, out[
            "executor_modules"
        ]


def named_local_executor(alias: str) -> LocalExecutor:
    executor = LocalExecutor(parallelism=1)
    executor.name = ExecutorName(module_path=LOCAL, alias=alias)
    return executor


@pytest.fixture
def no_configured_executors(monkeypatch):
    """Fault injection: loading the configured executors is an error in tests that hand executors over."""

    def forbidden(*args, **kwargs):
        raise AssertionError("executors were loaded from the configuration although they were handed over")

    monkeypatch.setattr(ExecutorLoader, "init_executors", forbidden)


def test_airflow_scheduler_command_hands_its_executors_to_the_runner(clear_db):
    out = run_fresh(SCHEDULER_CLI_SCRIPT, {"AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False"}, timeout=300)
    assert out == {
        "init_executors": 1,  # by the command; neither the runner nor the Job loads them again
        "handed": ["LocalExecutor"],
        "same_objects": True,
        "started_for_job": [True],
        "job_state": "success",
        "alias_is_runners": True,
        "alias_warning": ["RemovedInAirflow4Warning"],
    }


class TestSchedulerJobRunnerExecutors:
    def test_explicit_executors_are_used_exactly(self, clear_db, no_configured_executors):
        first, second = named_local_executor("first"), named_local_executor("second")
        runner = SchedulerJobRunner(job=Job(), num_runs=1, executors=[first, second])
        assert runner.executors == [first, second]
        assert runner.executor is first
        assert runner._try_to_load_executor(None) is first
        assert runner._try_to_load_executor("second") is second
        assert runner._try_to_load_executor(LOCAL) is first

    def test_explicit_executors_run_in_a_real_scheduler_loop(self, clear_db, no_configured_executors):
        first, second = named_local_executor("first"), named_local_executor("second")
        job = Job()
        runner = SchedulerJobRunner(job=job, num_runs=1, executors=[first, second])
        run_job(job=job, execute_callable=runner._execute)
        assert job.state == "success"
        # _execute started (and ended) exactly the executors it was handed, for this job.
        assert first.job_id == job.id
        assert second.job_id == job.id
        assert first.callback_sink is not None and second.callback_sink is not None

    def test_without_executors_the_configured_ones_are_loaded(self):
        runner = SchedulerJobRunner(job=Job(), num_runs=1)
        assert [type(e) for e in runner.executors] == [LocalExecutor]
        assert runner.executor is runner.executors[0]
        assert runner.executor.name.alias == "LocalExecutor"

    def test_multiple_configured_executors_first_is_default(self, clear_db, tmp_path):
        # A second executor class of our own: the same executor class cannot be configured twice.
        (tmp_path / "jobexec_other_executor.py").write_text(
            "from airflow.executors.local_executor import LocalExecutor\n\n"
            "class OtherExecutor(LocalExecutor):\n    pass\n"
        )
        script = """
        import json
        from airflow.jobs.job import Job
        from airflow.jobs.scheduler_job_runner import SchedulerJobRunner
        runner = SchedulerJobRunner(job=Job(), num_runs=1)
        print(json.dumps({
            "aliases": [e.name.alias for e in runner.executors],
            "classes": [type(e).__name__ for e in runner.executors],
            "default": runner.executor.name.alias,
            "routed": runner._try_to_load_executor("other").name.alias,
        }))
        """
        pythonpath = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
        out = run_fresh(
            script,
            {
                "AIRFLOW__CORE__EXECUTOR": "LocalExecutor,other:jobexec_other_executor.OtherExecutor",
                "PYTHONPATH": pythonpath,
            },
        )
        assert out == {
            "aliases": ["LocalExecutor", "other"],
            "classes": ["LocalExecutor", "OtherExecutor"],
            "default": "LocalExecutor",
            "routed": "other",
        }

    def test_empty_executor_list_is_refused(self):
        with pytest.raises(ValueError, match="at least one executor"):
            SchedulerJobRunner(job=Job(), num_runs=1, executors=[])


def _deprecation(caught) -> list[tuple[str, str]]:
    """(category, file) of each warning: deprecations must be Airflow's own and point at the caller."""
    return [(w.category.__name__, os.path.basename(w.filename)) for w in caught]


HERE = os.path.basename(__file__)


class TestDeprecatedJobExecutorAttributes:
    def test_positional_executor_keeps_its_3_1_3_meaning(self, no_configured_executors):
        executor = named_local_executor("handed")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            job = Job(executor, 7)  # 3.1.3's signature: Job(executor=None, heartrate=None, **kwargs)
        assert job.heartrate == 7
        assert _deprecation(caught) == [("RemovedInAirflow4Warning", HERE)]
        assert str(caught[0].message) == (
            "Job(executor=...) is deprecated (removed in Airflow 3.2): pass the executors to "
            "SchedulerJobRunner(job, executors=[...]) instead."
        )
        runner = SchedulerJobRunner(job=job, num_runs=1)  # no executors=: the job's are used, none loaded
        assert runner.executors == [executor]
        assert runner.executor is executor

    def test_executors_keyword_is_handed_to_the_runner(self, no_configured_executors):
        first, second = named_local_executor("first"), named_local_executor("second")
        with pytest.warns(RemovedInAirflow4Warning, match=r"Job\(executors=\.\.\.\) is deprecated"):
            job = Job(executors=[first, second])
        runner = SchedulerJobRunner(job=job, num_runs=1)
        assert runner.executors == [first, second]
        assert runner.executor is first

    def test_explicit_runner_executors_win_over_the_jobs(self, no_configured_executors):
        with pytest.warns(RemovedInAirflow4Warning):
            job = Job(executor=named_local_executor("handed"))
        explicit = named_local_executor("explicit")
        runner = SchedulerJobRunner(job=job, num_runs=1, executors=[explicit])
        assert runner.executors == [explicit]

    def test_setters_before_the_runner_exists(self, no_configured_executors):
        job = Job()
        first, second, default = (named_local_executor(n) for n in ("first", "second", "default"))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            job.executors = [first, second]
            job.executor = default  # replaces the default (first) executor; the others are kept
        assert _deprecation(caught) == [("RemovedInAirflow4Warning", HERE)] * 2
        runner = SchedulerJobRunner(job=job, num_runs=1)
        assert runner.executors == [default, second]
        assert runner.executor is default

    def test_setters_change_the_runners_executors(self, no_configured_executors):
        first, replacement = named_local_executor("first"), named_local_executor("replacement")
        job = Job()
        runner = SchedulerJobRunner(job=job, num_runs=1, executors=[first])
        with pytest.warns(RemovedInAirflow4Warning, match=r"Job\.executor is deprecated"):
            job.executor = replacement
        assert runner.executors == [replacement]
        assert runner.executor is replacement
        with pytest.warns(RemovedInAirflow4Warning, match=r"Job\.executors is deprecated"):
            job.executors = [first]
        assert runner.executors == [first] and runner.executor is first

    def test_empty_executor_list_is_refused_by_the_setter(self):
        job = Job()
        with pytest.raises(ValueError, match="at least one executor"):
            job.executors = []

    def test_job_without_runner_fails_loudly(self, no_configured_executors):
        job = Job()
        for name in ("executor", "executors"):
            with pytest.raises(AttributeError, match=rf"SchedulerJobRunner\.{name}"):
                getattr(job, name)
        assert "executors" not in job.__dict__

    def test_triggerer_job_fails_loudly(self, no_configured_executors):
        job = Job()
        TriggererJobRunner(job=job, capacity=1)
        with pytest.raises(AttributeError, match=r"SchedulerJobRunner\.executors"):
            _ = job.executors
        with pytest.raises(AttributeError, match=r"SchedulerJobRunner\.executor\b"):
            _ = job.executor

    def test_scheduler_job_delegates_with_a_warning(self, no_configured_executors):
        first, second = named_local_executor("first"), named_local_executor("second")
        job = Job()
        runner = SchedulerJobRunner(job=job, num_runs=1, executors=[first, second])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert job.executors is runner.executors
            assert job.executor is first
        assert _deprecation(caught) == [("RemovedInAirflow4Warning", HERE)] * 2
        assert [str(w.message) for w in caught] == [
            "Job.executors is deprecated (removed in Airflow 3.2): use SchedulerJobRunner.executors instead.",
            "Job.executor is deprecated (removed in Airflow 3.2): use SchedulerJobRunner.executor instead.",
        ]

    def test_job_does_not_keep_the_runner_alive(self, no_configured_executors):
        import gc

        job = Job()
        SchedulerJobRunner(job=job, num_runs=1, executors=[named_local_executor("first")])
        gc.collect()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with pytest.raises(AttributeError, match="SchedulerJobRunner"):
                _ = job.executor
