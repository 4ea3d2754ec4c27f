"""Ctrl-C on the orchestrator: no process of the stack survives it.

A child orchestrator (the tools venv's Python) starts a small stack from the venv under test -- dag-processor and
scheduler with LocalExecutor, no api-server, so it is quick -- waits until the scheduler has forked its workers,
reports every pid of the stack and idles. The test sends it SIGINT (what a terminal's Ctrl-C does) and then
checks that none of those processes, nor anything else in the stack's sessions, is left -- within 10 s of the
signal (issue 17: every process group is signalled at once), and within a few seconds of a second Ctrl-C, which
kills at once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[2]

ORCHESTRATOR = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    sys.path.insert(0, sys.argv[1])
    from memseries.stack import EXAMPLE_DAGS, Stack, StackConfig

    st = Stack(StackConfig(venv=Path(sys.argv[2]), label="interrupt", parallelism=2, age_interval=5,
                           components=["dag-processor", "scheduler"], dags=[EXAMPLE_DAGS / "busy_bash.py"]))
    with st:
        deadline = time.monotonic() + 150
        while len(st.workers()) < 2 and time.monotonic() < deadline:
            st.check_alive()
            time.sleep(1)
        procs = st.processes()
        print(json.dumps({"pids": [p.pid for p in procs], "roles": sorted({p.role for p in procs}),
                          "sids": sorted(st._sids), "home": str(st.home)}), flush=True)
        while True:
            time.sleep(1)
    """
)


STOP_WITHIN = 10.0  # seconds from the signal until no process of the stack is left
KILL_WITHIN = 4.0  # seconds from a second Ctrl-C until no process is left


def _sigint_default() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize(
    ("sig", "twice"),
    [(signal.SIGINT, False), (signal.SIGTERM, False), (signal.SIGINT, True)],
    ids=["sigint", "sigterm", "sigint-twice"],
)
def test_interrupting_the_orchestrator_leaves_no_process(e2e_venv, tmp_path, sig, twice):
    script = tmp_path / "orchestrator.py"
    script.write_text(ORCHESTRATOR)
    orch = subprocess.Popen(
        [sys.executable, str(script), str(REPO / "scripts"), str(e2e_venv)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        # As from a terminal: SIGINT at its default, even when this test runs as a background job (a shell
        # starts those with SIGINT ignored, the orchestrator would inherit that and rightly not react to it).
        preexec_fn=_sigint_default,
    )
    info = None
    try:
        line = orch.stdout.readline()  # blocks until the stack is up with its workers (or the child died)
        assert line, f"orchestrator died before reporting: {orch.stderr.read()[-3000:]}"
        info = json.loads(line)
        assert "worker" in info["roles"], info
        procs = [p for p in map(_proc, info["pids"]) if p]
        orch.send_signal(sig)
        t_signal = time.monotonic()
        if twice:
            time.sleep(0.5)  # the first stop is under way (SIGTERM sent, waiting for the scheduler)
            orch.send_signal(sig)
            _gone, alive = psutil.wait_procs(procs, timeout=KILL_WITHIN)
            assert not alive, f"alive {KILL_WITHIN:g} s after a second Ctrl-C: {alive}"
        _gone, alive = psutil.wait_procs(procs, timeout=STOP_WITHIN)
        print(f"{len(procs)} processes of the stack gone {time.monotonic() - t_signal:.1f} s after the "
              f"{'second ' if twice else ''}{signal.Signals(sig).name}")
        assert not alive, f"alive {STOP_WITHIN:g} s after the signal: {alive}"
        orch.wait(timeout=60)
        left = [p for p in psutil.process_iter() if _sid(p.pid) in set(info["sids"]) and not _orphan_zombie(p)]
        assert not left, f"left in the stack's sessions: {left}"
        assert not Path(info["home"]).exists(), "the stack's AIRFLOW_HOME was not removed"
        assert orch.returncode != 0  # interrupted, not a clean exit
    finally:
        if orch.poll() is None:
            os.killpg(orch.pid, signal.SIGKILL)
            orch.wait()
        if info:  # never leave anything behind, even when an assertion failed
            for pid in info["pids"]:
                if p := _proc(pid):
                    p.kill()
        time.sleep(0)


def _proc(pid: int):
    try:
        return psutil.Process(pid)
    except psutil.Error:
        return None


def _orphan_zombie(proc: psutil.Process) -> bool:
    """An exited process whose parent is gone, waiting for init to reap it.

    It holds no memory and runs nothing; how soon it disappears is up to PID 1 (on these VMs a process API that
    reaps orphans about once a second), not to the harness.
    """
    try:
        return proc.status() == psutil.STATUS_ZOMBIE and proc.ppid() == 1
    except psutil.Error:
        return True  # gone meanwhile


def _sid(pid: int):
    try:
        return os.getsid(pid)
    except OSError:
        return None
