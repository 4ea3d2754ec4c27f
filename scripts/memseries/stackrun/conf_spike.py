"""The demo's big-conf run (issue 12): one run of examples/dags/mapped_conf.py (a task mapped over 500 items)
triggered with a ~1 MiB conf, so the scheduler's peak RSS shows what loading the run's conf per TI row costs.

Triggered the same way on every build, once the dag-processor has serialized the DAG, `TRIGGER_AFTER` seconds
into the run, through the venv's own Python with the conf on stdin (a CLI `-c` argument is capped at 128 KiB).
A DAGs folder without that DAG has no big-conf run: the demo then reports "-".
"""

from __future__ import annotations

import json
import subprocess

from memseries.stack import Stack

DAG_ID = "memseries_mapped_conf"
TRIGGER_AFTER = 25.0  # seconds after start-up
TRIGGER = (
    "import json, sys\n"
    "from airflow.api.common.trigger_dag import trigger_dag\n"
    "from airflow.utils.types import DagRunTriggeredByType\n"
    f"trigger_dag({DAG_ID!r}, triggered_by=DagRunTriggeredByType.TEST, conf=json.load(sys.stdin))\n"
)


def big_conf(kib: int = 1024) -> dict:
    """~`kib` KiB of JSON; the DAG reads only conf["pick"]."""
    return {"pick": "needle", "records": [{"id": i, "text": "x" * 1000} for i in range(kib)]}


def present(stack: Stack) -> bool:
    return any(DAG_ID in f.read_text(errors="replace") for f in stack.dags_dir.glob("*.py"))


def trigger(stack: Stack) -> bool:
    """Trigger the run if the DAG is serialized yet; True once triggered."""
    if not stack.query("SELECT 1 FROM serialized_dag WHERE dag_id = %s", (DAG_ID,)):
        return False
    proc = subprocess.run([str(stack.python), "-c", TRIGGER], input=json.dumps(big_conf()), env=stack.env,
                          capture_output=True, text=True, timeout=180, cwd=stack.home, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"triggering {DAG_ID} failed: {proc.stderr.strip()[-1000:]}")
    return True


def run_state(stack: Stack) -> str:
    """'<run state>, <success>/<total> TIs' of the big-conf run."""
    runs = stack.query("SELECT state FROM dag_run WHERE dag_id = %s", (DAG_ID,))
    if not runs:
        return "not triggered"
    tis = dict(stack.query("SELECT state, count(*) FROM task_instance WHERE dag_id = %s GROUP BY state", (DAG_ID,)))
    total = sum(tis.values())
    return f"{runs[0][0]}, {tis.get('success', 0)}/{total} TIs"
