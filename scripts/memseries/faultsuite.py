"""Fault scenarios on a real Airflow stack (issue 17), shared by tests/e2e/test_faults.py and `memseries bench faults`.

A scenario injects one fault into a running stack (PostgreSQL, api-server, dag-processor, scheduler(s),
LocalExecutor) while runs of the `memseries_faults` DAG are in flight, waits for recovery and returns an
`Outcome`, judged from the metadata DB and from the files every task try writes (faultdags/memseries_faults.py):

- every TI of the scenario's runs ends in `success` (after retries or not): otherwise it is *lost*;
- no TI ever has two tries (or one try twice) running at once: otherwise it is *doubled*;
- no try stayed queued longer than `[scheduler] task_queued_timeout` (set short here);
- no deadlock error in any log of the stack.

Scenarios never raise on a failed expectation: the bench tabulates, the tests assert `outcome.problems()`.
Timeouts are derived from what is waited for (heartbeat timeout, queued timeout, task length), with wide margins.
Nothing here imports airflow.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import psutil

from memseries.stack import Component, Stack, StackConfig, StackError
from memseries.stack.procs import WORKER_TITLE, tail, title

FAULT_DAGS = Path(__file__).resolve().parent / "faultdags"
FAULT_DAG = "memseries_faults"
SLOW_PARSE_DAG = "memseries_faults_slow_parse"
VERSIONED_DAG = "memseries_faults_versioned"
TRACK_ENV = "MEMSERIES_FAULTS_TRACK_DIR"

PARALLELISM = 2
HEARTBEAT_TIMEOUT = 20.0  # [scheduler] task_instance_heartbeat_timeout
HEARTBEAT_DETECTION = 5.0
QUEUED_TIMEOUT = 60.0  # [scheduler] task_queued_timeout ("short")
QUEUED_CHECK = 10.0
RETRY_DELAY = 2.0  # the DAG's retry_delay
STOP_WITHIN = 10.0
#: one scheduling round trip (trigger -> queued -> running -> success) of a tiny task on a busy 2-core machine
ROUND_TRIP = 60.0
DEADLOCK = re.compile(r"deadlock detected|DeadlockDetected|ERROR:\s+deadlock", re.IGNORECASE)
SLOW_PRELOAD_MODULE = "memseries_slow_preload"


# -- the build under test ----------------------------------------------------------------------------------------

def _site_packages(venv: Path) -> Path | None:
    found = sorted(Path(venv).glob("lib/python3*/site-packages"))
    return found[0] if found else None


@dataclasses.dataclass(frozen=True)
class BuildFeatures:
    """What the venv's Airflow can do, decided by looking at its files (never by its version string)."""

    local_zygote: bool  # airflow.executors.local_zygote (lexec, 3.3.2 patches 0007/0008: dead workers handled)
    preload_modules: bool  # [dag_processor] preload_modules (dagproc, 3.3.2 series)

    @classmethod
    def probe(cls, venv: Path) -> BuildFeatures:
        sp = _site_packages(venv)
        if sp is None:
            return cls(False, False)
        cfg = sp / "airflow" / "config_templates" / "config.yml"
        text = cfg.read_text(errors="replace") if cfg.exists() else ""
        return cls(
            local_zygote=(sp / "airflow" / "executors" / "local_zygote.py").exists(),
            preload_modules=re.search(r"^    preload_modules:\s*$", text, re.MULTILINE) is not None,
        )

    def missing(self, scenario: str) -> str | None:
        """Why the build cannot pass `scenario` (a skip reason for make test), or None."""
        if scenario == "idle-worker-kill" and not self.local_zygote:
            return ("needs the lexec patches (3.3.2 0007/0008: LocalExecutor zygote + dead-worker handling; probe: "
                    "airflow/executors/local_zygote.py absent): an idle worker SIGKILLed while it holds the task "
                    "queue's read lock wedges the pool of unpatched LocalExecutor")
        if scenario == "dagproc-sigterm-preload" and not self.preload_modules:
            return "the build has no [dag_processor] preload_modules (dagproc's 3.3.2 series patch 0010)"
        return None


# -- stack -------------------------------------------------------------------------------------------------------

def fault_config(venv: Path, label: str, track: Path, *, schedulers: int = 1, extra_dags: list[Path] | None = None,
                 config: dict | None = None) -> StackConfig:
    settings = {
        ("scheduler", "task_instance_heartbeat_timeout"): str(int(HEARTBEAT_TIMEOUT)),
        ("scheduler", "task_instance_heartbeat_timeout_detection_interval"): str(int(HEARTBEAT_DETECTION)),
        ("scheduler", "task_queued_timeout"): str(QUEUED_TIMEOUT),
        ("scheduler", "task_queued_timeout_check_interval"): str(QUEUED_CHECK),
        ("scheduler", "scheduler_health_check_threshold"): "15",
        ("scheduler", "orphaned_tasks_check_interval"): "10",
        ("dag_processor", "min_file_process_interval"): "8",
        ("dag_processor", "refresh_interval"): "5",
        **(config or {}),
    }
    extra = [Component(f"scheduler-{i + 2}", []) for i in range(schedulers - 1)]
    cfg = StackConfig(
        venv=venv,
        label=label,
        backend="postgres",
        parallelism=PARALLELISM,
        dags=[FAULT_DAGS / "memseries_faults.py", FAULT_DAGS / "memseries_faults_slow_parse.py", *(extra_dags or [])],
        age_interval=None,
        config=settings,
        env={TRACK_ENV: str(track)},
        extra_components=extra,
    )
    return cfg


class FaultStack(Stack):
    """A Stack whose extra `scheduler-N` components are more schedulers (argv filled in at start)."""

    def start_component(self, comp: Component) -> subprocess.Popen:
        if comp.name.startswith("scheduler") and not comp.argv:
            comp = Component(comp.name, self.component_argv("scheduler"), comp.env)
        return super().start_component(comp)


def open_stack(venv: Path, label: str, track: Path, log: Callable[[str], None] = print, **kw) -> FaultStack:
    st = FaultStack(fault_config(venv, label, track, **kw), log=log)
    st.track = track  # type: ignore[attr-defined]
    st.start()
    # the fault DAG must be parsed and unpaused before anything is triggered
    st.wait_for(lambda: bool(st.query("SELECT 1 FROM dag WHERE dag_id = %s AND NOT is_paused", (FAULT_DAG,))),
                240, f"{FAULT_DAG} parsed")
    return st


def timed_stop(st: Stack) -> tuple[float, list]:
    """Stop the whole stack (every group at once): seconds until no process of it is left, and what was left.

    Timed: SIGTERM to every group, the grace, SIGKILL of what is left; not timed: dropping the database and
    removing AIRFLOW_HOME, which `st.stop()` does afterwards."""
    t0 = time.monotonic()
    st.groups.stop(grace=st.cfg.stop_grace)
    st.groups.kill_leftovers()
    elapsed = time.monotonic() - t0
    left = st.leftovers()
    killed = sorted(n for n, p in st.procs.items() if p.returncode == -signal.SIGKILL)
    st.stop_killed = killed  # type: ignore[attr-defined]
    st.stop()
    return elapsed, left


# -- PostgreSQL ------------------------------------------------------------------------------------------------

def pg_cluster(port: int = 5432) -> tuple[str, str] | None:
    """(version, name) of the local cluster on `port`, from pg_lsclusters; None without pg_ctlcluster."""
    try:
        out = subprocess.run(["pg_lsclusters", "--no-header"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[2] == str(port):
            return parts[0], parts[1]
    return None


def pg_online(cluster: tuple[str, str]) -> bool:
    out = subprocess.run(["pg_lsclusters", "--no-header", cluster[0], cluster[1]], capture_output=True, text=True,
                         timeout=30).stdout
    return " online" in out


def ensure_pg_running(cluster: tuple[str, str] | None) -> None:
    """Whatever happened: the cluster runs afterwards (start it if it does not)."""
    if cluster is None:
        return
    for _ in range(3):
        with contextlib.suppress(Exception):
            if pg_online(cluster):
                return
            subprocess.run(["pg_ctlcluster", cluster[0], cluster[1], "start"], timeout=120, check=False)
        time.sleep(2)


def pg_restart_unavailable(cluster: tuple[str, str] | None) -> str | None:
    if cluster is None:
        return "no local PostgreSQL cluster on port 5432 in pg_lsclusters (pg_ctlcluster not available)"
    if os.geteuid() != 0 and os.environ.get("USER") != "postgres":
        return "restarting PostgreSQL needs root or the postgres user"
    return None


# -- observing ---------------------------------------------------------------------------------------------------

def _epoch(value) -> float | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


def trigger(st: Stack, scenario: str, n: int = 4, seconds: float = 6) -> str:
    run_id = f"faults__{scenario}__{uuid.uuid4().hex[:8]}"
    res = st.airflow_cli("dags", "trigger", FAULT_DAG, "-r", run_id, "-c", json.dumps({"n": n, "seconds": seconds}))
    if res.returncode != 0:
        raise StackError(f"`airflow dags trigger` failed: {res.stdout[-1500:]}{res.stderr[-1500:]}")
    return run_id


def run_state(st: Stack, run_id: str) -> str | None:
    rows = st.query("SELECT state FROM dag_run WHERE run_id = %s", (run_id,))
    return str(rows[0][0]) if rows else None


def tis(st: Stack, run_id: str) -> list[tuple]:
    return st.query(
        "SELECT task_id, map_index, state, try_number, id FROM task_instance WHERE run_id = %s "
        "ORDER BY task_id, map_index", (run_id,))


def running_work(st: Stack, run_id: str) -> list[tuple]:
    return [t for t in tis(st, run_id) if t[0] == "work" and str(t[2]) == "running"]


def worker_info(workers: list, ti_id):
    """The LocalExecutor worker (a ProcInfo of `workers`) whose title says it runs TI `ti_id`, or None."""
    key = str(ti_id).replace("-", "").lower()
    for w in workers:
        if w.title.replace("-", "").lower().rstrip().endswith(key):
            return w
    return None


def worker_of(st: Stack, ti_id) -> psutil.Process | None:
    if (w := worker_info(st.workers(), ti_id)) is not None:
        with contextlib.suppress(psutil.Error):
            return psutil.Process(w.pid)
    return None


def idle_workers(st: Stack) -> list:
    return [w for w in st.workers() if w.title.rstrip().endswith("<idle>")]


def drained(st: Stack) -> bool:
    return st.query("SELECT count(*) FROM task_instance WHERE state IN ('queued', 'running', 'scheduled', "
                    "'up_for_retry', 'restarting')")[0][0] == 0


def wait_quiet(st: Stack, timeout: float = 3 * ROUND_TRIP) -> bool:
    try:
        st.wait_for(lambda: drained(st), timeout, "no task instance in flight", poll=1.0)
        return True
    except StackError:
        return False


def wait_run(st: Stack, run_id: str, timeout: float) -> float | None:
    """Seconds until the run is finished (success or failed), None if it is not within `timeout`."""
    t0 = time.monotonic()
    try:
        st.wait_for(lambda: run_state(st, run_id) in ("success", "failed"), timeout, f"run {run_id} to finish",
                    poll=1.0)
    except StackError as e:
        if "timed out" not in str(e):
            raise
        return None
    return time.monotonic() - t0


def wchan(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/wchan").read_text().strip()
    except OSError:
        return ""


def deadlock_lines(st: Stack) -> int:
    n = 0
    if not st.home:
        return 0
    for path in (st.home / "logs").rglob("*"):
        if path.is_file():
            with contextlib.suppress(OSError):
                n += len(DEADLOCK.findall(path.read_text(errors="replace")))
    return n


def track_tries(track: Path, run_ids: list[str]) -> dict[tuple[str, str, str], dict[int, dict]]:
    """(run, task, map_index) -> try_number -> {"pids": {pid: (first, last)}, "end": bool} from the task files."""
    out: dict[tuple[str, str, str], dict[int, dict]] = {}
    for run_id in run_ids:
        for f in track.glob(f"{run_id}.*.log"):
            _, task_id, map_index, _ = f.name.rsplit(".", 3)
            tries = out.setdefault((run_id, task_id, map_index), {})
            for line in f.read_text(errors="replace").splitlines():
                parts = line.split()
                if len(parts) != 4:
                    continue
                what, tn, pid, t = parts[0], int(parts[1]), int(parts[2]), float(parts[3])
                rec = tries.setdefault(tn, {"pids": {}, "end": False})
                first, last = rec["pids"].get(pid, (t, t))
                rec["pids"][pid] = (min(first, t), max(last, t))
                rec["end"] = rec["end"] or what == "end"
    return out


def doubled(track: Path, run_ids: list[str]) -> list[str]:
    """TIs that ever had two tries, or one try in two processes, running at the same time."""
    bad = []
    for key, tries in track_tries(track, run_ids).items():
        spans = [(tn, pid, a, b) for tn, rec in tries.items() for pid, (a, b) in rec["pids"].items()]
        for i, (tn1, p1, a1, b1) in enumerate(spans):
            for tn2, p2, a2, b2 in spans[i + 1:]:
                if a1 < b2 and a2 < b1:
                    bad.append(f"{'.'.join(key)}: try {tn1} (pid {p1}) and try {tn2} (pid {p2}) overlap")
    return bad


def queued_too_long(st: Stack, run_ids: list[str]) -> list[str]:
    """Tries that waited in `queued` longer than task_queued_timeout (or were failed there by it)."""
    bad = []
    for table in ("task_instance", "task_instance_history"):
        for run_id in run_ids:
            rows = st.query(f"SELECT task_id, map_index, try_number, state, queued_dttm, start_date, end_date "
                            f"FROM {table} WHERE run_id = %s", (run_id,))
            for task_id, mi, tn, state, q, s, e in rows:
                q, s, e = _epoch(q), _epoch(s), _epoch(e)
                if q is None:
                    continue
                if s is not None and s >= q and s - q > QUEUED_TIMEOUT:
                    bad.append(f"{run_id}.{task_id}.{mi} try {tn}: queued {s - q:.0f}s")
                elif s is None and str(state) in ("failed", "up_for_retry") and (e or time.time()) - q >= QUEUED_TIMEOUT:
                    bad.append(f"{run_id}.{task_id}.{mi} try {tn}: failed in queued")
                elif str(state) == "queued" and time.time() - q > QUEUED_TIMEOUT:
                    bad.append(f"{run_id}.{task_id}.{mi} try {tn}: still queued after {time.time() - q:.0f}s")
    return bad


# -- outcome -----------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Outcome:
    scenario: str
    build: str
    ok: int = 0  # TIs in success
    retried: int = 0  # of which needed more than one try
    lost: int = 0  # TIs not in success at the end
    doubled: int = 0
    queued_too_long: int = 0
    deadlocks: int = 0
    recovery_s: float | None = None  # fault -> every run of the scenario finished
    stop_s: float | None = None
    skipped: str | None = None
    notes: list[str] = dataclasses.field(default_factory=list)
    #: components that exited during the fault and were started again by the harness ("scheduler (1)")
    exited: list[str] = dataclasses.field(default_factory=list)

    def problems(self) -> list[str]:
        out = []
        if self.lost:
            out.append(f"{self.lost} task instance(s) lost (not success at the end)")
        if self.doubled:
            out.append(f"{self.doubled} task instance(s) ran twice at once")
        if self.queued_too_long:
            out.append(f"{self.queued_too_long} tr(y/ies) queued longer than task_queued_timeout")
        if self.deadlocks:
            out.append(f"{self.deadlocks} deadlock error(s) in the logs")
        if self.stop_s is not None and self.stop_s > STOP_WITHIN:
            out.append(f"the stack took {self.stop_s:.1f}s to stop (> {STOP_WITHIN:g}s)")
        return out + [n for n in self.notes if n.startswith("FAIL")]

    def row(self) -> list:
        def s(v):
            return "-" if v is None else f"{v:.0f}"
        if self.skipped:
            return [self.scenario, self.build, "skipped", "", "", "", "", "", self.skipped]
        verdict = "; ".join(self.problems()) or "ok"
        if self.exited:
            verdict += f" (exited on the fault, restarted by the harness: {', '.join(self.exited)})"
        return [self.scenario, self.build, self.ok, self.retried, self.lost, self.doubled, s(self.recovery_s),
                "-" if self.stop_s is None else f"{self.stop_s:.1f}", verdict]


HEADERS = ["scenario", "build", "TIs ok", "retried", "lost", "doubled", "recovery s", "stop s", "verdict"]


def assess(st: Stack, outcome: Outcome, run_ids: list[str], deadlocks_before: int) -> Outcome:
    track: Path = st.track  # type: ignore[attr-defined]
    for run_id in run_ids:
        for task_id, _mi, state, tn, _id in tis(st, run_id):
            if str(state) == "success":
                outcome.ok += 1
                outcome.retried += int(tn or 1) > 1
            else:
                outcome.lost += 1
                outcome.notes.append(f"{run_id}.{task_id}.{_mi}: {state} (try {tn})")
    dbl = doubled(track, run_ids)
    outcome.doubled = len({d.split(":")[0] for d in dbl})
    outcome.notes += dbl
    q = queued_too_long(st, run_ids)
    outcome.queued_too_long = len(q)
    outcome.notes += q
    outcome.deadlocks = max(0, deadlock_lines(st) - deadlocks_before)
    if outcome.lost and st.cfg.backend == "postgres":
        outcome.notes += stale_transactions(st)
    return outcome


#: a transaction idle this long is nobody's work in progress (the scheduler commits every loop)
STALE_TRANSACTION_S = 60.0


def stale_transactions(st: Stack) -> list[str]:
    """Why runs may stop moving: DB transactions left open, and which processes still hold their connection.

    A SIGKILLed scheduler's transaction ends only when the last process holding its connection's socket goes.
    Processes it forked (LocalExecutor workers on unpatched 3.3.2) inherit that socket and can outlive it; its
    row locks (slot_pool's, taken FOR UPDATE NOWAIT in the critical section) then stay held and no scheduler
    queues a task again. Noted, not judged: lost TIs already fail the scenario.
    """
    rows = st.query(
        "SELECT client_port, extract(epoch FROM now() - state_change), left(query, 60) FROM pg_stat_activity "
        "WHERE datname = current_database() AND state = 'idle in transaction' AND now() - state_change > "
        f"interval '{STALE_TRANSACTION_S:g} seconds'"
    )
    return [f"DB connection idle in transaction for {age:.0f} s (last query {query!r}), held by "
            f"{', '.join(holders_of_port(port)) or 'no process found'}" for port, age, query in rows]


def holders_of_port(port: int) -> list[str]:
    """The processes holding the local end (TCP port `port`) of a connection: 'pid title (parent ppid)'."""
    pids = {c.pid for c in psutil.net_connections("tcp") if c.laddr and c.laddr.port == port and c.pid}
    out = []
    for pid in sorted(pids):
        with contextlib.suppress(psutil.Error):
            p = psutil.Process(pid)
            out.append(f"{pid} {title(p)[:60]!r} (parent {p.ppid()})")
    return out


def _recover(st: Stack, outcome: Outcome, run_ids: list[str], fault_at: float, timeout: float) -> None:
    for run_id in run_ids:
        if wait_run(st, run_id, max(1.0, timeout - (time.monotonic() - fault_at))) is None:
            outcome.notes.append(f"run {run_id} not finished {timeout:.0f}s after the fault")
            return
    outcome.recovery_s = time.monotonic() - fault_at


# -- scenarios ---------------------------------------------------------------------------------------------------

TASK_SECONDS = 12.0
#: a SIGKILLed busy worker's task is noticed at the heartbeat timeout (unpatched) and retried; then it runs again
BUSY_RECOVERY = 3 * (HEARTBEAT_TIMEOUT + HEARTBEAT_DETECTION + RETRY_DELAY + TASK_SECONDS) + 2 * ROUND_TRIP


def busy_worker_kill(st: Stack, build: str) -> Outcome:
    """1. SIGKILL a LocalExecutor worker while it runs a task."""
    out = Outcome("1 busy worker SIGKILL", build)
    before = deadlock_lines(st)
    run_id = trigger(st, "busy", n=3, seconds=TASK_SECONDS)

    def victim():
        for t in running_work(st, run_id):
            if (w := worker_of(st, t[4])) is not None:
                return w
        return None

    st.wait_for(lambda: victim() is not None, 3 * ROUND_TRIP, "a fault task running in a worker", poll=0.3)
    w = victim()
    w.send_signal(signal.SIGKILL)
    fault_at = time.monotonic()
    out.notes.append(f"killed busy worker {w.pid}")
    _recover(st, out, [run_id], fault_at, BUSY_RECOVERY)
    return assess(st, out, [run_id], before)


def idle_worker_kill(st: Stack, build: str) -> Outcome:
    """2. SIGKILL the idle workers one at a time; after each kill a small run must go through the pool.

    Unpatched LocalExecutor's idle workers all read one shared queue: the one blocked reading the pipe holds the
    queue's read lock (kernel wait channel pipe_read), the others wait for that lock (a futex). Each round kills a
    waiter, the last round kills the lock holder, so both kinds are among the victims."""
    out = Outcome("2 idle worker SIGKILL", build)
    before = deadlock_lines(st)
    run_ids = []
    t_first = None
    for rnd in range(PARALLELISM):
        wait_quiet(st)
        st.wait_for(lambda: len(idle_workers(st)) >= PARALLELISM, 3 * ROUND_TRIP, "idle LocalExecutor workers",
                    poll=1)
        time.sleep(2)  # let every idle worker block in the queue's get()
        idle = idle_workers(st)
        holders = [w for w in idle if "pipe" in wchan(w.pid)]
        others = [w for w in idle if w not in holders]
        w = (holders or others)[0] if rnd == PARALLELISM - 1 else (others or holders)[0]
        out.notes.append(f"round {rnd + 1}: idle workers " + ", ".join(f"{x.pid} ({wchan(x.pid) or '?'})" for x in idle)
                         + f"; SIGKILL {w.pid}")
        with contextlib.suppress(ProcessLookupError):
            os.kill(w.pid, signal.SIGKILL)
        fault_at = time.monotonic()
        t_first = t_first or fault_at
        run_id = trigger(st, "idle", n=PARALLELISM, seconds=2)
        run_ids.append(run_id)
        # healthy: one round trip; the wedge shows as tries failed by task_queued_timeout, then retried in vain
        if wait_run(st, run_id, QUEUED_TIMEOUT + QUEUED_CHECK + 2 * ROUND_TRIP) is None:
            out.notes.append(f"FAIL: pool wedged after SIGKILL of idle worker {w.pid}: run {run_id} did not finish")
            break
        if run_state(st, run_id) != "success":
            out.notes.append(f"run {run_id} after killing {w.pid}: {run_state(st, run_id)}")
            break
    else:
        out.recovery_s = time.monotonic() - t_first
    return assess(st, out, run_ids, before)


def running_scheduler(st: Stack, run_id: str) -> str | None:
    """The scheduler component whose LocalExecutor worker runs one of the run's work tasks (None: not found)."""
    workers = st.workers()
    for t in running_work(st, run_id):
        if (w := worker_info(workers, t[4])) is not None and w.component.startswith("scheduler"):
            return w.component
    return None


def scheduler_kill_restart(st: Stack, build: str) -> Outcome:
    """3. SIGKILL the scheduler (its main process only) while tasks run, then start a new one."""
    out = Outcome("3 scheduler SIGKILL + restart", build)
    before = deadlock_lines(st)
    run_id = trigger(st, "sched", n=4, seconds=TASK_SECONDS)
    st.wait_for(lambda: len(running_work(st, run_id)) >= 1, 3 * ROUND_TRIP, "fault tasks running", poll=0.5)
    # with two schedulers, kill the one whose worker runs the run's task: killing the other one would leave the
    # scenario's run untouched (it would pass without testing anything)
    deadline = time.monotonic() + 15
    while (name := running_scheduler(st, run_id)) is None and time.monotonic() < deadline:
        time.sleep(0.3)
    name = name or "scheduler"
    old = st.procs[name]
    old.send_signal(signal.SIGKILL)
    fault_at = time.monotonic()
    out.notes.append(f"killed {name} {old.pid}")
    old.wait(timeout=30)
    st.start_component(Component(name, st.component_argv("scheduler")))
    # the new scheduler adopts or resets what the dead one had queued (scheduler_health_check_threshold 15 s,
    # orphan check every 10 s) and the heartbeat timeout catches what it was running
    _recover(st, out, [run_id], fault_at, BUSY_RECOVERY + 60)
    return assess(st, out, [run_id], before)


#: what a component that exits on a database outage must have logged (its last such line is quoted in the table)
DB_ERROR = re.compile(
    r"OperationalError|InterfaceError|server closed the connection unexpectedly|could not connect to server|"
    r"connection to server at .* failed|the database system is (?:shutting down|starting up|in recovery mode)|"
    r"terminating connection due to administrator command|Connection refused",
    re.IGNORECASE,
)
#: restarts of one component within one scenario above which it is a crash loop, not a clean exit
MAX_RESTARTS = 3
#: after the scenario's runs finished: how long every component must stay up (a late exit is restarted too)
SETTLE = 15.0


class Supervisor:
    """What systemd (`Restart=on-failure`) or Kubernetes does for the stack while a fault lasts: a component whose
    main process exits is started again, and the exit is recorded with the database error it logged.

    Upstream Airflow's components are written for that: the scheduler's loop lets a database error end the
    process (`SchedulerJobRunner._execute` logs "Exception when executing SchedulerJob._run_scheduler_loop" and
    re-raises), relying on the supervisor to start it again. An exit is acceptable only with a database error in
    the part of the component's log written since the supervision began, and at most MAX_RESTARTS times."""

    def __init__(self, st: Stack, outcome: Outcome, t0: float | None = None) -> None:
        self.st = st
        self.outcome = outcome
        self.t0 = time.monotonic() if t0 is None else t0
        self.offsets = {n: self._size(n) for n in st.procs}
        self.restarts: dict[str, int] = {}

    def _size(self, name: str) -> int:
        path = self.st.logfiles.get(name)
        try:
            return path.stat().st_size if path else 0
        except OSError:
            return 0

    def _db_error(self, name: str) -> str | None:
        path = self.st.logfiles.get(name)
        if not path:
            return None
        with contextlib.suppress(OSError), open(path, "rb") as f:
            f.seek(self.offsets.get(name, 0))
            text = f.read().decode(errors="replace")
            found = [ln.strip() for ln in text.splitlines() if DB_ERROR.search(ln)]
            return found[-1][-160:] if found else None
        return None

    def poll(self) -> list[str]:
        """Restart every component whose main process has exited; returns their names."""
        dead = [n for n, p in self.st.procs.items() if p.poll() is not None]
        for name in dead:
            code = self.st.procs[name].returncode
            n = self.restarts[name] = self.restarts.get(name, 0) + 1
            err = self._db_error(name)
            at = time.monotonic() - self.t0
            self.outcome.exited.append(f"{name} ({code})")
            if err is None:
                self.outcome.notes.append(f"FAIL: {name} exited ({code}) {at:.0f}s after the fault without a "
                                          f"database error in its log:\n{tail(self.st.logfiles.get(name), 15)}")
            else:
                self.outcome.notes.append(f"{name} exited ({code}) {at:.0f}s after the fault on: {err}; restarted")
            if n > MAX_RESTARTS:
                self.outcome.notes.append(f"FAIL: {name} exited {n} times (crash loop); not restarted again")
                raise StackError(f"{name} crash loop")
            self.offsets[name] = self._size(name)
            argv = self.st.component_argv("scheduler" if name.startswith("scheduler") else name)
            self.st.start_component(Component(name, argv))
        return dead

    def wait_for(self, predicate: Callable[[], bool], timeout: float, what: str, poll: float = 1.0) -> bool:
        """Like Stack.wait_for, restarting what exits; False on timeout (noted)."""
        deadline = time.monotonic() + timeout
        while True:
            self.poll()
            with contextlib.suppress(Exception):
                if predicate():
                    return True
            if time.monotonic() > deadline:
                self.outcome.notes.append(f"FAIL: timed out after {timeout:.0f}s waiting for {what}")
                return False
            time.sleep(poll)

    def settle(self, seconds: float = SETTLE) -> None:
        """Every component up for `seconds` in a row (restarting what exits meanwhile)."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if self.poll():
                end = time.monotonic() + seconds
            time.sleep(1.0)


#: how long scenario 4 keeps PostgreSQL down (stop, wait, start). Long enough that the scheduler's and the
#: dag-processor's loops hit the outage for certain (retry_db_transaction gives up after 3 tries within ~3 s), so
#: every run exercises what a plain `pg_ctlcluster restart` (~1 s down here) hits only by timing
PG_DOWN = 6.0


def postgres_restart(st: Stack, build: str, cluster: tuple[str, str] | None = None, down: float = PG_DOWN) -> Outcome:
    """4. Restart PostgreSQL while tasks run, keeping it down `down` seconds (0: `pg_ctlcluster restart`); the server
    runs again afterwards whatever happens.

    Upstream's scheduler and dag-processor let a database error in their loops end the process and rely on a
    process supervisor to start them again (3.3.2, unpatched and patched alike: `SchedulerJobRunner._execute` logs
    "Exception when executing SchedulerJob._run_scheduler_loop", drains its LocalExecutor and exits 1; the
    DagProcessorJob likewise). The scenario does what that supervisor does (Supervisor: start them again) and
    requires that every exit came with a database error in the component's log, that nothing crash-looped, and as
    always that no TI was lost or ran twice. The table names who exited."""
    out = Outcome("4 PostgreSQL restart" + (f" ({down:g}s down)" if down else ""), build)
    cluster = cluster or pg_cluster()
    if reason := pg_restart_unavailable(cluster):
        out.skipped = reason
        return out
    before = deadlock_lines(st)
    run_id = trigger(st, "pg", n=4, seconds=TASK_SECONDS)
    st.wait_for(lambda: len(running_work(st, run_id)) >= 1, 3 * ROUND_TRIP, "fault tasks running", poll=0.5)
    sup = Supervisor(st, out)
    fault_at = time.monotonic()
    try:
        steps = [["restart"]] if not down else [["stop"], ["start"]]
        for i, step in enumerate(steps):
            if i:
                time.sleep(down)
            res = subprocess.run(["pg_ctlcluster", cluster[0], cluster[1], *step], capture_output=True,
                                 text=True, timeout=180)
            if res.returncode != 0:
                out.notes.append(f"FAIL: pg_ctlcluster {step[0]} exit {res.returncode}: {res.stderr[-500:]}")
    finally:
        ensure_pg_running(cluster)
    out.notes.append(f"PostgreSQL back {time.monotonic() - fault_at:.1f}s after the fault began")
    try:
        # a scheduler that exits on the outage first drains its LocalExecutor (executor.end() runs what is queued),
        # then the new one adopts or resets what the old one left: one more scheduler start
        timeout = BUSY_RECOVERY + 60
        if sup.wait_for(lambda: run_state(st, run_id) in ("success", "failed"), timeout, f"run {run_id} to finish"):
            out.recovery_s = time.monotonic() - fault_at
        sup.settle()  # so that the scenarios after this one have a whole stack
    except StackError as e:  # crash loop: noted as FAIL by the supervisor
        out.notes.append(f"FAIL: {e}")
        return out
    return assess(st, out, [run_id], before)


def parse_process_kill(st: Stack, build: str) -> Outcome:
    """5a. SIGKILL the process parsing a (slow) DAG file: the file is parsed again, the dag-processor lives on."""
    out = Outcome("5a parse process SIGKILL", build)
    before = deadlock_lines(st)
    track: Path = st.track  # type: ignore[attr-defined]
    dagproc = st.procs["dag-processor"].pid

    def parsing_now():
        for f in track.glob("slow_parse.*"):
            pid = int(f.name.split(".")[1])
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(pid)
                if dagproc in {p.pid for p in proc.parents()}:
                    return proc
        return None

    st.wait_for(lambda: parsing_now() is not None, 3 * ROUND_TRIP, "a parse of the slow DAG file", poll=0.2)
    victim = parsing_now()
    victim.send_signal(signal.SIGKILL)
    fault_at = time.monotonic()
    killed_wall = time.time()
    out.notes.append(f"killed parse process {victim.pid}")

    def reparsed():
        rows = st.query("SELECT last_parsed_time FROM dag WHERE dag_id = %s", (SLOW_PARSE_DAG,))
        return bool(rows) and (_epoch(rows[0][0]) or 0) > killed_wall

    try:
        st.wait_for(reparsed, 3 * ROUND_TRIP, "the slow file parsed again")
        out.recovery_s = time.monotonic() - fault_at
    except StackError as e:
        out.notes.append(f"FAIL: {str(e).splitlines()[0]}")
    # and the stack still runs tasks
    run_id = trigger(st, "parse", n=2, seconds=2)
    if wait_run(st, run_id, 3 * ROUND_TRIP) is None:
        out.notes.append(f"FAIL: run {run_id} not finished after the parse kill")
    return assess(st, out, [run_id], before)


SLOW_PRELOAD_SECONDS = 60.0
#: the module's first import (a parse process: [dag_processor] preload_modules preloads a module only after a parse
#: process imported it) is quick; every later one (the preload, in the parse zygote or the manager) sleeps
SLOW_PRELOAD = f'''"""memseries fault suite: an approved preload module whose preload import takes {SLOW_PRELOAD_SECONDS:g} s."""
import os, time
_track = os.environ.get("{TRACK_ENV}")
if _track:
    try:
        os.close(os.open(os.path.join(_track, "preload-first"), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        open(os.path.join(_track, "preload." + str(os.getpid())), "w").write(str(time.time()))
        time.sleep({SLOW_PRELOAD_SECONDS})
'''
PRELOAD_DAG = "memseries_faults_preload"
PRELOAD_DAG_SRC = f'''"""memseries fault suite: a DAG file that imports the slow approved preload module."""
from datetime import datetime

import {SLOW_PRELOAD_MODULE}  # noqa: F401
from airflow.sdk import DAG

with DAG(dag_id="{PRELOAD_DAG}", schedule=None, start_date=datetime(2026, 1, 1), catchup=False,
         tags=["memseries", "faults"]):
    pass
'''


def dagproc_sigterm_preload(st: Stack, build: str, features: BuildFeatures) -> Outcome:
    """5b. SIGTERM the dag-processor while it imports a slow approved preload module: it stops within 10 s.

    The module is approved in [dag_processor] preload_modules and imported by a DAG file (patch 0010 preloads a
    module only after a parse process imported it); its first import is quick, the preload import (in the parse
    zygote, or in the manager without one) sleeps SLOW_PRELOAD_SECONDS. The SIGTERM goes to the dag-processor's
    process group as soon as the preload import began."""
    out = Outcome("5b dag-processor SIGTERM in preload", build)
    if reason := features.missing("dagproc-sigterm-preload"):
        out.skipped = reason
        return out
    assert st.home
    track: Path = st.track  # type: ignore[attr-defined]
    module = st.home / "memseries-site" / f"{SLOW_PRELOAD_MODULE}.py"
    dag_file = st.dags_dir / f"{PRELOAD_DAG}.py"
    st.stop_component("dag-processor")
    for f in [*track.glob("preload.*"), track / "preload-first"]:
        f.unlink(missing_ok=True)
    module.write_text(SLOW_PRELOAD)
    dag_file.write_text(PRELOAD_DAG_SRC)
    try:
        env = {"AIRFLOW__DAG_PROCESSOR__PRELOAD_MODULES": SLOW_PRELOAD_MODULE}
        proc = st.start_component(Component("dag-processor", st.component_argv("dag-processor"), env))
        st.wait_for(lambda: any(track.glob("preload.*")), 3 * ROUND_TRIP, "the slow preload import to start",
                    poll=0.2)
        importer = _proc(int(next(track.glob("preload.*")).name.split(".")[1]))
        with contextlib.suppress(psutil.Error):
            if importer is not None:
                out.notes.append(f"preload import in pid {importer.pid} ({importer.cmdline()[0][:60]})")
        members = [proc.pid] + [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
        procs = [p for p in map(_proc, members) if p]
        os.killpg(proc.pid, signal.SIGTERM)
        t0 = time.monotonic()
        _gone, alive = psutil.wait_procs(procs, timeout=SLOW_PRELOAD_SECONDS / 2)
        out.stop_s = time.monotonic() - t0
        if alive:
            out.notes.append(f"FAIL: still alive {out.stop_s:.0f}s after SIGTERM: {[p.pid for p in alive]}")
            for p in alive:
                with contextlib.suppress(psutil.Error):
                    p.kill()
        out.notes.append(f"dag-processor exit code {proc.wait(timeout=30)}")
    finally:
        # back to a normal dag-processor, without the slow module (a later parse of the DAG file would sleep)
        dag_file.unlink(missing_ok=True)
        module.unlink(missing_ok=True)
        if st.procs["dag-processor"].poll() is None:
            st.stop_component("dag-processor")
        st.start_component(Component("dag-processor", st.component_argv("dag-processor")))
    out.ok = int(not alive)
    out.lost = int(bool(alive))
    return out


def _proc(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except psutil.Error:
        return None


# -- long runs (bench) -------------------------------------------------------------------------------------------

VERSIONED_SRC = FAULT_DAGS / "memseries_faults.py"


_VERSIONED_START: dict[Path, datetime] = {}


def write_versioned_dag(dags_dir: Path, version: int, scheduled: bool = True) -> None:
    """memseries_faults as a scheduled DAG (every minute, catch-up) whose doc changes with `version`: every rewrite
    makes a new serialized DAG, so the dag-processor writes new dag_version rows while the schedulers run it.
    `scheduled=False` (the end of a run): schedule=None, so no new run is created and the ones in flight finish."""
    src = VERSIONED_SRC.read_text()
    src = src.replace('dag_id="memseries_faults"', f'dag_id="{VERSIONED_DAG}"')
    if scheduled:
        src = src.replace("schedule=None", "schedule=timedelta(minutes=1)")
    start = _VERSIONED_START.setdefault(dags_dir, datetime.fromtimestamp(time.time() // 60 * 60 - 600, UTC))
    src = src.replace("start_date=datetime(2026, 1, 1)",
                      f"start_date=datetime({start:%Y, %-m, %-d, %-H, %-M}), doc_md='version {version}'")
    src = src.replace("catchup=False", "catchup=True")
    src = src.replace("max_active_runs=16", "max_active_runs=3")
    tmp = dags_dir / f".{VERSIONED_DAG}.tmp"
    tmp.write_text(src)
    tmp.replace(dags_dir / f"{VERSIONED_DAG}.py")


def all_run_ids(st: Stack, dag_ids: tuple[str, ...]) -> list[str]:
    marks = ",".join(["%s"] * len(dag_ids))
    return [r[0] for r in st.query(f"SELECT run_id FROM dag_run WHERE dag_id IN ({marks})", dag_ids)]


def _supervise(sup: Supervisor | None) -> bool:
    """Restart what exited (the Supervisor notes it in its Outcome); False on a crash loop: the run cannot go on."""
    if sup is None:
        return True
    try:
        sup.poll()
    except StackError:
        return False
    return True


def two_schedulers(st: Stack, build: str, duration: float, progress: Callable[[float], None] = lambda f: None,
                   fault_every: float = 0.0, features: BuildFeatures | None = None) -> Outcome:
    """6. (and the mixed run) Two schedulers while the versioned DAG changes every 20 s; with `fault_every`, one of
    the quick faults (1, 3, 4, 5a) in turn every `fault_every` seconds."""
    name = "6 two schedulers, DAG versions" if not fault_every else "mixed run (1,3,4,5a + versions)"
    out = Outcome(name, build)
    assert st.home
    before = deadlock_lines(st)
    t0 = time.monotonic()
    version = 0
    next_fault = t0 + fault_every if fault_every else float("inf")
    faults = [("1 busy worker SIGKILL", busy_worker_kill), ("3 scheduler SIGKILL + restart", scheduler_kill_restart),
              ("4 PostgreSQL restart", postgres_restart), ("5a parse process SIGKILL", parse_process_kill)]
    sub: list[Outcome] = []
    write_versioned_dag(st.dags_dir, version)
    # Scenario 6 alone: any exit is a failure (check_alive). Mixed run: a component may exit after a fault, e.g. a
    # scheduler that hits the PostgreSQL outage after scenario 4's own supervision ended; restart it as systemd would
    # and judge the exit by its log (Supervisor), so that one exit does not end the whole run. A fresh Supervisor
    # after each fault: its log window and its crash-loop count are per fault, not per run.
    sup = Supervisor(st, out, t0) if fault_every else None
    while time.monotonic() - t0 < duration:
        progress((time.monotonic() - t0) / duration)
        if sup is None:
            st.check_alive()
        elif not _supervise(sup):
            break
        time.sleep(20)
        version += 1
        write_versioned_dag(st.dags_dir, version)
        if time.monotonic() >= next_fault:
            name, fault = faults[len(sub) % len(faults)]
            try:
                sub.append(fault(st, build))
            except StackError as e:  # a wait of the fault timed out or a component died meanwhile: noted, go on
                sub.append(Outcome(name, build, notes=[f"FAIL: {str(e).splitlines()[0]}"]))
            if not _supervise(sup):
                break
            sup = Supervisor(st, out)
            next_fault = time.monotonic() + fault_every
    # End: not by pausing the DAG. The scheduler does not examine the runs of a paused DAG (3.3.2
    # DagRun.get_running_dag_runs_to_examine filters is_paused), so a run created just before the pause stayed
    # running with its mapped task never expanded and was counted as lost (trial run, 3.3.2+memfix). Instead the
    # last version has schedule=None: once the dag-processor stored it (dag.timetable_summary 'None') no run is
    # created any more, and every run in flight finishes.
    write_versioned_dag(st.dags_dir, version + 1, scheduled=False)

    def finished() -> bool:
        rows = st.query("SELECT timetable_summary FROM dag WHERE dag_id = %s", (VERSIONED_DAG,))
        active = st.query("SELECT count(*) FROM dag_run WHERE dag_id = %s AND state IN ('queued', 'running')",
                          (VERSIONED_DAG,))[0][0]
        return bool(rows) and rows[0][0] == "None" and active == 0 and drained(st)

    end_timeout = 2 * ROUND_TRIP + BUSY_RECOVERY + QUEUED_TIMEOUT
    if sup is None:
        with contextlib.suppress(StackError):
            st.wait_for(finished, end_timeout, f"every run of {VERSIONED_DAG} finished", poll=1.0)
    else:  # the last fault may still be settling: keep restarting what exits while the runs drain
        with contextlib.suppress(StackError):
            sup.wait_for(finished, end_timeout, f"every run of {VERSIONED_DAG} finished")
    st.set_paused(VERSIONED_DAG)
    versions = st.query("SELECT count(*) FROM dag_version WHERE dag_id = %s", (VERSIONED_DAG,))[0][0]
    runs = all_run_ids(st, (VERSIONED_DAG,))
    out.notes.append(f"{len(runs)} runs, {versions} dag versions")
    if sub:
        out.notes.append(f"{len(sub)} faults: " + ", ".join(
            s.scenario.split()[0] + (" FAILED" if s.problems() else "") for s in sub))
    assess(st, out, runs, before)
    for s in sub:
        out.ok += s.ok
        out.retried += s.retried
        out.lost += s.lost
        out.doubled += s.doubled
        out.queued_too_long += s.queued_too_long
        out.exited += s.exited
        # a fault's FAIL note stays a FAIL of the mixed run (problems() looks for the prefix)
        out.notes += [f"FAIL: [{s.scenario}] {n[5:].lstrip()}" if n.startswith("FAIL:") else f"[{s.scenario}] {n}"
                      for n in s.notes]
    if sub:
        rec = [s.recovery_s for s in sub if s.recovery_s is not None]
        out.recovery_s = max(rec) if rec else None
    return out
