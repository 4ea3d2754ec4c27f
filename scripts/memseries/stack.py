"""Start, observe and stop a real Airflow stack from a given venv.

This is the end-to-end harness behind ``memseries demo``, ``memseries bench soak`` and ``tests/e2e``. It runs the
same ``airflow`` commands an operator runs -- ``db migrate``, ``api-server``, ``dag-processor``, ``scheduler`` (and
whatever extra components an executor needs, e.g. ``celery worker``) -- each in its own session/process group,
with all configuration passed as ``AIRFLOW__SECTION__KEY`` environment variables and a throw-away AIRFLOW_HOME.

Nothing here imports airflow: the orchestrator runs in the tools venv (psutil, optionally psycopg2) and talks to
the stack only through processes, /proc (psutil) and the metadata database.

Aging (``age_interval``): the harness, never the patches, puts a ``sitecustomize.py`` on the components'
PYTHONPATH that registers ``os.register_at_fork(after_in_child=...)``; every forked child (LocalExecutor workers,
dag-processor parse processes, task processes) then runs ``gc.collect()`` every N seconds in a daemon thread, as
a long-lived production process eventually does. Without it a worker may not run a single full collection in
20 minutes, and a benchmark measures nothing.

Cleanup guarantees: components run with ``start_new_session=True``, so each has its own session/process group;
``stop()`` SIGTERMs each group, waits a grace period, SIGKILLs the group, and then SIGKILLs every remaining
process whose session id belongs to the stack (orphans re-parented to init included) or that is a recorded
descendant. ``stop()`` is idempotent and runs from ``__exit__``, from an ``atexit`` hook, and on SIGINT/SIGTERM of
the orchestrator (the handlers turn the signal into an exception so the ``with`` block unwinds).
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_DAGS = REPO / "examples" / "dags"
PG_URL = os.environ.get("MEMSERIES_PG_URL", "postgresql://postgres@127.0.0.1:5432")

WORKER_TITLE = "airflow worker -- LocalExecutor"

AGE_ENV = "MEMSERIES_AGE_GC_INTERVAL"
AGE_LOG_ENV = "MEMSERIES_AGE_LOG_DIR"

SITECUSTOMIZE = r'''"""memseries harness only (never part of a patch): age forked children with periodic full collections."""
import os

_interval = float(os.environ.get("MEMSERIES_AGE_GC_INTERVAL") or 0)
if _interval > 0:
    import gc
    import threading
    import time

    _logdir = os.environ.get("MEMSERIES_AGE_LOG_DIR") or ""

    def _memseries_private_bytes():
        # USS of this process right now (Private_Clean + Private_Dirty of /proc/self/smaps_rollup)
        try:
            fd = os.open("/proc/self/smaps_rollup", os.O_RDONLY)
            try:
                data = b""
                while chunk := os.read(fd, 65536):
                    data += chunk
            finally:
                os.close(fd)
            total = 0
            for line in data.split(b"\n"):
                if line.startswith((b"Private_Clean:", b"Private_Dirty:")):
                    total += int(line.split()[1]) * 1024
            return total
        except (OSError, ValueError):
            return -1

    def _memseries_log(logdir, line):
        # os-level I/O only: no Python locks that a later fork could inherit held
        try:
            fd = os.open(os.path.join(logdir, str(os.getpid())), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
            try:
                os.write(fd, line.encode())
            finally:
                os.close(fd)
        except OSError:
            pass

    def _memseries_age_loop(interval, logdir):
        if logdir:
            # line 0: the USS right after the fork, before this child has run anything
            _memseries_log(logdir, "0 0 %.2f %d\n" % (time.time(), _memseries_private_bytes()))
        n = 0
        while True:
            time.sleep(interval)
            t0 = time.perf_counter()
            gc.collect()
            n += 1
            if logdir:
                _memseries_log(logdir, "%d %.6f %.2f\n" % (n, time.perf_counter() - t0, time.time()))

    def _memseries_after_fork():
        threading.Thread(
            target=_memseries_age_loop, args=(_interval, _logdir), name="memseries-age", daemon=True
        ).start()

    os.register_at_fork(after_in_child=_memseries_after_fork)
'''


# --------------------------------------------------------------------------------------------------------------
# configuration


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env_key(section: str, key: str) -> str:
    return f"AIRFLOW__{section.upper()}__{key.upper()}"


@dataclasses.dataclass
class Component:
    """One long-running process of the stack: ``argv`` is run with the venv's bin/ first on PATH."""

    name: str
    argv: list[str]
    env: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class StackConfig:
    venv: Path
    label: str = ""
    backend: str = "sqlite"  # or "postgres"
    executor: str = "LocalExecutor"
    parallelism: int = 4
    #: DAG files (or directories whose *.py files are taken) copied into AIRFLOW_HOME/dags
    dags: list[Path] = dataclasses.field(default_factory=lambda: [EXAMPLE_DAGS])
    #: seconds between forced gc.collect() in every forked child; 0/None disables aging
    age_interval: float | None = 30.0
    #: extra [section] key = value settings, e.g. {("dag_processor", "preload_modules"): "numpy"}
    config: dict[tuple[str, str], str] = dataclasses.field(default_factory=dict)
    #: extra plain environment variables for every component
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    #: extra components started after the standard ones (e.g. celery workers for a CeleryExecutor stack)
    extra_components: list[Component] = dataclasses.field(default_factory=list)
    #: replace the standard components entirely (names: api-server, dag-processor, scheduler)
    components: list[str] = dataclasses.field(
        default_factory=lambda: ["api-server", "dag-processor", "scheduler"]
    )
    pg_url: str = PG_URL
    keep_home: bool = False
    home_parent: Path | None = None
    migrate_timeout: float = 600.0
    start_timeout: float = 240.0


def default_config(cfg: StackConfig, port: int, home: Path, db_uri: str) -> dict[str, str]:
    """The AIRFLOW__ environment every component gets (same secrets everywhere)."""
    jwt = secrets.token_hex(32)
    settings: dict[tuple[str, str], str] = {
        ("core", "executor"): cfg.executor,
        ("core", "parallelism"): str(cfg.parallelism),
        ("core", "dags_folder"): str(home / "dags"),
        ("core", "load_examples"): "False",
        ("core", "dags_are_paused_at_creation"): "False",
        ("core", "execution_api_server_url"): f"http://127.0.0.1:{port}/execution/",
        ("core", "min_serialized_dag_update_interval"): "10",
        ("core", "min_serialized_dag_fetch_interval"): "5",
        ("database", "sql_alchemy_conn"): db_uri,
        ("database", "load_default_connections"): "False",
        ("api", "secret_key"): secrets.token_hex(16),
        ("api", "base_url"): f"http://127.0.0.1:{port}/",
        ("api", "port"): str(port),
        ("api_auth", "jwt_secret"): jwt,
        ("core", "simple_auth_manager_all_admins"): "True",
        ("scheduler", "scheduler_heartbeat_sec"): "2",
        ("scheduler", "job_heartbeat_sec"): "2",
        ("scheduler", "task_instance_heartbeat_timeout"): "45",
        ("scheduler", "task_instance_heartbeat_timeout_detection_interval"): "5",
        ("scheduler", "parsing_cleanup_interval"): "30",
        ("scheduler", "task_queued_timeout_check_interval"): "30",
        ("scheduler", "orphaned_tasks_check_interval"): "30",
        ("scheduler", "max_tis_per_query"): "64",
        ("dag_processor", "refresh_interval"): "10",
        ("dag_processor", "min_file_process_interval"): "15",
        ("dag_processor", "print_stats_interval"): "600",
        ("dag_processor", "stale_dag_threshold"): "120",
        ("dag_processor", "dag_file_processor_timeout"): "120",
        ("core", "dagbag_import_timeout"): "120",
        ("logging", "logging_level"): "INFO",
        ("workers", "min_heartbeat_interval"): "5",
    }
    settings.update(cfg.config)
    return {env_key(s, k): v for (s, k), v in settings.items()}


def postgres_unreachable(pg_url: str = PG_URL) -> str | None:
    """None if PostgreSQL answers at pg_url, else why not (for skips and clear errors)."""
    try:
        import psycopg2

        psycopg2.connect(f"{pg_url}/postgres", connect_timeout=5).close()
    except Exception as e:  # noqa: BLE001 - any failure means: not usable
        return f"PostgreSQL at {pg_url} not reachable: {e}"
    return None


# --------------------------------------------------------------------------------------------------------------
# process helpers


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def _live_children(proc: psutil.Process) -> int:
    """Children that are not zombies (a zombie shares no pages: it does not distort its parent's USS/PSS)."""
    n = 0
    for child in proc.children():
        with contextlib.suppress(psutil.Error):
            if child.status() != psutil.STATUS_ZOMBIE:
                n += 1
    return n


def _getsid(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None


def _title(proc: psutil.Process) -> str:
    try:
        # setproctitle pads the title with spaces over the old argv area
        return " ".join(proc.cmdline()).strip()
    except psutil.Error:
        return ""


def _kill_pids(pids: Iterable[int], sig: int = signal.SIGKILL) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


@dataclasses.dataclass
class ProcInfo:
    pid: int
    role: str  # scheduler, worker, task, dag-processor, parse, api-server, <component>-child, ...
    component: str
    title: str
    ppid: int


def default_classify(component: str, proc: psutil.Process, title: str, parent_role: str) -> str:
    """Role of a descendant of ``component``'s main process (executor-specific bits go in a custom one)."""
    if parent_role in ("worker", "task"):
        return "task"  # forked by a worker's supervisor: inherits the worker's title, so check this first
    if title.startswith(WORKER_TITLE):
        return "worker"
    if component == "dag-processor" and parent_role == "dag-processor":
        return "parse"
    return f"{component}-child"


@dataclasses.dataclass
class Sample:
    t: float  # seconds since the stack was started
    pid: int
    role: str
    pss: int
    uss: int
    rss: int
    title: str
    wall: float = 0.0  # time.time() of the sample (the aging log uses wall-clock times too)
    #: live child processes at sample time. A worker's USS drops while it has forked a task process (the pages
    #: are then shared, not unique), so compare a worker's USS only over samples with children == 0.
    children: int = 0


class Sampler(threading.Thread):
    """Samples PSS/USS of every process of the stack every ``interval`` seconds (psutil memory_full_info)."""

    def __init__(self, stack: Stack, interval: float = 5.0, roles: Iterable[str] | None = None):
        super().__init__(name="memseries-sampler", daemon=True)
        self.stack = stack
        self.interval = interval
        self.roles = set(roles) if roles else None
        self.samples: list[Sample] = []
        self._stop_evt = threading.Event()
        self.lock = threading.Lock()

    def sample_once(self) -> list[Sample]:
        now = time.monotonic() - self.stack.t0
        out = []
        for info in self.stack.processes():
            if self.roles and info.role not in self.roles:
                continue
            try:
                proc = psutil.Process(info.pid)
                before = _live_children(proc)
                m = proc.memory_full_info()
                nkids = max(before, _live_children(proc))  # a child that came or went meanwhile counts too
            except psutil.Error:
                continue
            out.append(Sample(now, info.pid, info.role, m.pss, m.uss, m.rss, info.title, time.time(), nkids))
        with self.lock:
            self.samples.extend(out)
        return out

    def run(self) -> None:
        while not self._stop_evt.is_set():
            started = time.monotonic()
            with contextlib.suppress(Exception):
                self.sample_once()
            self._stop_evt.wait(max(0.5, self.interval - (time.monotonic() - started)))

    def stop(self) -> None:
        self._stop_evt.set()
        if self.is_alive():
            self.join(timeout=30)

    def snapshot(self) -> list[Sample]:
        with self.lock:
            return list(self.samples)

    def by_pid(self) -> dict[int, list[Sample]]:
        out: dict[int, list[Sample]] = {}
        for s in self.snapshot():
            out.setdefault(s.pid, []).append(s)
        return out


# --------------------------------------------------------------------------------------------------------------
# global safety net: no process survives the orchestrator

_LIVE: list[Stack] = []
_HANDLERS_INSTALLED = False


def _stop_all_live() -> None:
    for stack in _LIVE:
        with contextlib.suppress(Exception):
            stack.stop()


def _on_signal(signum, frame):  # pragma: no cover - exercised by hand (Ctrl-C)
    # Turn the signal into an exception: `with Stack(...)` blocks unwind and stop their stacks; atexit is the
    # last resort. A second signal while stopping is ignored so the cleanup can finish.
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, signal.SIG_IGN)
    try:
        _stop_all_live()
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, _on_signal)
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise SystemExit(128 + signum)


def _install_handlers() -> None:
    global _HANDLERS_INSTALLED
    if _HANDLERS_INSTALLED:
        return
    _HANDLERS_INSTALLED = True
    atexit.register(_stop_all_live)
    if threading.current_thread() is threading.main_thread():
        for s in (signal.SIGINT, signal.SIGTERM):
            # don't override a handler somebody else (pytest, rich) installed deliberately, except the defaults
            if signal.getsignal(s) in (signal.SIG_DFL, signal.default_int_handler, None):
                signal.signal(s, _on_signal)


# --------------------------------------------------------------------------------------------------------------
# the stack


class StackError(RuntimeError):
    pass


class Stack:
    """A running Airflow stack. Use as a context manager::

    with Stack(StackConfig(venv=Path(".venv/airflow-3.1.3"))) as st:
        st.wait_for_task_runs(100)
        print(st.task_counts())
    """

    def __init__(
        self,
        config: StackConfig,
        classify: Callable[[str, psutil.Process, str, str], str] = default_classify,
        log: Callable[[str], None] | None = None,
    ):
        self.cfg = config
        self.venv = Path(config.venv).resolve()
        self.classify = classify
        self.log = log or (lambda msg: None)
        self.home: Path | None = None
        self.port = 0
        self.env: dict[str, str] = {}
        self.procs: dict[str, subprocess.Popen] = {}
        self.logfiles: dict[str, Path] = {}
        self._sids: set[int] = set()
        self._seen: dict[int, float] = {}  # pid -> create_time of every descendant ever seen
        self._pg_db: str | None = None
        self.db_uri = ""
        self.t0 = time.monotonic()
        self.started_wall = 0.0
        self.stopped = False
        self._stop_lock = threading.RLock()
        self.sampler: Sampler | None = None

    # -- lifecycle ---------------------------------------------------------------------------------------------

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def airflow(self) -> Path:
        return self.venv / "bin" / "airflow"

    @property
    def dags_dir(self) -> Path:
        assert self.home
        return self.home / "dags"

    @property
    def age_log_dir(self) -> Path:
        assert self.home
        return self.home / "memseries-age"

    def __enter__(self) -> Stack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _prepare_home(self) -> None:
        if not self.airflow.exists():
            raise StackError(f"no airflow in {self.venv} (expected {self.airflow})")
        self.home = Path(
            tempfile.mkdtemp(
                prefix=f"memseries-stack-{self.cfg.label or self.venv.name}-", dir=self.cfg.home_parent
            )
        )
        (self.home / "logs").mkdir()
        self.dags_dir.mkdir()
        self.age_log_dir.mkdir()
        site = self.home / "memseries-site"
        site.mkdir()
        (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
        for src in self.cfg.dags:
            src = Path(src)
            files = sorted(src.glob("*.py")) if src.is_dir() else [src]
            for f in files:
                shutil.copy2(f, self.dags_dir / f.name)

    def _prepare_db(self) -> None:
        assert self.home
        if self.cfg.backend == "sqlite":
            self.db_uri = f"sqlite:///{self.home / 'airflow.db'}"
        elif self.cfg.backend == "postgres":
            import psycopg2

            self._pg_db = f"memseries_stack_{uuid.uuid4().hex[:12]}"
            conn = psycopg2.connect(f"{self.cfg.pg_url}/postgres", connect_timeout=10)
            conn.autocommit = True
            try:
                conn.cursor().execute(f'CREATE DATABASE "{self._pg_db}"')
            finally:
                conn.close()
            base = self.cfg.pg_url.replace("postgresql://", "postgresql+psycopg2://", 1)
            self.db_uri = f"{base}/{self._pg_db}"
        else:
            raise StackError(f"unknown backend {self.cfg.backend!r} (sqlite or postgres)")

    def _build_env(self) -> dict[str, str]:
        assert self.home
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("AIRFLOW") and k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")
        }
        env.update(
            {
                "AIRFLOW_HOME": str(self.home),
                "VIRTUAL_ENV": str(self.venv),
                "PATH": f"{self.venv / 'bin'}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}",
                "PYTHONPATH": str(self.home / "memseries-site"),
                "PYTHONUNBUFFERED": "1",
                AGE_ENV: str(self.cfg.age_interval or 0),
                AGE_LOG_ENV: str(self.age_log_dir),
            }
        )
        env.update(default_config(self.cfg, self.port, self.home, self.db_uri))
        env.update(self.cfg.env)
        return env

    def component_argv(self, name: str) -> list[str]:
        if name == "api-server":
            return [str(self.airflow), "api-server", "-p", str(self.port), "-H", "127.0.0.1", "-w", "1"]
        if name == "dag-processor":
            return [str(self.airflow), "dag-processor"]
        if name == "scheduler":
            return [str(self.airflow), "scheduler", "--skip-serve-logs"]
        raise StackError(f"unknown component {name!r}")

    def start(self) -> Stack:
        _install_handlers()
        _LIVE.append(self)
        self.t0 = time.monotonic()
        self.started_wall = time.time()
        self.port = free_port()
        self._prepare_home()
        self._prepare_db()
        self.env = self._build_env()
        self.log(f"[{self.cfg.label}] AIRFLOW_HOME={self.home} db={self.cfg.backend} port={self.port}")
        self.migrate()
        comps = [Component(n, self.component_argv(n)) for n in self.cfg.components]
        comps += list(self.cfg.extra_components)
        for comp in comps:
            self.start_component(comp)
        if "api-server" in self.procs:
            self.wait_api()  # the others start meanwhile: tasks need the API, parsing and scheduling don't
        self.t0 = time.monotonic()
        return self

    def migrate(self) -> None:
        assert self.home
        logf = self.home / "logs" / "db-migrate.log"
        with open(logf, "wb") as out:
            proc = subprocess.Popen(
                [str(self.airflow), "db", "migrate"],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            self._sids.add(proc.pid)
            try:
                rc = proc.wait(timeout=self.cfg.migrate_timeout)
            except subprocess.TimeoutExpired:
                _kill_group(proc.pid)
                raise StackError(f"`airflow db migrate` timed out; log: {logf}") from None
        if rc != 0:
            raise StackError(f"`airflow db migrate` failed (exit {rc}):\n{tail(logf)}")

    def start_component(self, comp: Component) -> subprocess.Popen:
        assert self.home
        logf = self.home / "logs" / f"{comp.name}.log"
        env = dict(self.env)
        env.update(comp.env)
        out = open(logf, "ab")
        try:
            proc = subprocess.Popen(
                comp.argv,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=self.home,
            )
        finally:
            out.close()
        self.procs[comp.name] = proc
        self.logfiles[comp.name] = logf
        self._sids.add(proc.pid)
        self.log(f"[{self.cfg.label}] started {comp.name} pid={proc.pid}")
        return proc

    def wait_api(self, timeout: float | None = None) -> None:
        deadline = time.monotonic() + (timeout or self.cfg.start_timeout)
        url = f"http://127.0.0.1:{self.port}/api/v2/monitor/health"
        while time.monotonic() < deadline:
            self.check_alive(["api-server"])
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    if r.status < 500:
                        return
            except urllib.error.HTTPError as e:
                if e.code < 500:
                    return
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(1)
        raise StackError(
            f"api-server did not answer on port {self.port}:\n{tail(self.logfiles['api-server'])}"
        )

    def check_alive(self, names: Iterable[str] | None = None) -> None:
        for name in names or list(self.procs):
            proc = self.procs.get(name)
            if proc is not None and proc.poll() is not None:
                raise StackError(
                    f"[{self.cfg.label}] {name} exited with {proc.returncode}:\n{tail(self.logfiles[name])}"
                )

    def stop_component(self, name: str, grace: float = 20.0) -> int | None:
        proc = self.procs.get(name)
        if proc is None:
            return None
        self._remember_descendants()
        if proc.poll() is None:
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        _signal_group(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        return proc.returncode

    def stop(self, grace: float = 20.0) -> None:
        """Stop everything; idempotent. A signal arriving meanwhile runs a nested stop() that completes it."""
        with self._stop_lock:
            if self.stopped:
                return
            try:
                if self.sampler is not None:
                    self.sampler.stop()
                # scheduler first (it waits for its workers), then the rest, in reverse start order
                names = list(self.procs)
                order = [n for n in ("scheduler",) if n in names] + [
                    n for n in reversed(names) if n != "scheduler"
                ]
                for name in order:
                    self.stop_component(name, grace=grace)
                self.kill_leftovers()
            finally:
                self.stopped = True
                if self._pg_db:
                    with contextlib.suppress(Exception):
                        self._drop_pg()
                if self.home and not self.cfg.keep_home:
                    shutil.rmtree(self.home, ignore_errors=True)
                if self in _LIVE:
                    _LIVE.remove(self)

    def _drop_pg(self) -> None:
        import psycopg2

        conn = psycopg2.connect(f"{self.cfg.pg_url}/postgres", connect_timeout=10)
        conn.autocommit = True
        try:
            conn.cursor().execute(f'DROP DATABASE IF EXISTS "{self._pg_db}" WITH (FORCE)')
        finally:
            conn.close()

    def _remember_descendants(self) -> None:
        for proc in self.procs.values():
            for child in _descendants(proc.pid):
                with contextlib.suppress(psutil.Error):
                    self._seen[child.pid] = child.create_time()

    def leftovers(self) -> list[psutil.Process]:
        """Processes of this stack still alive: in one of its sessions, or a recorded descendant."""
        out = []
        me = os.getpid()
        for p in psutil.process_iter(["pid"]):
            if p.pid == me:
                continue
            sid = _getsid(p.pid)
            mine = sid in self._sids
            if not mine and p.pid in self._seen:
                with contextlib.suppress(psutil.Error):
                    mine = abs(p.create_time() - self._seen[p.pid]) < 0.05
            if mine:
                with contextlib.suppress(psutil.Error):
                    if p.status() != psutil.STATUS_ZOMBIE:
                        out.append(p)
        return out

    def kill_leftovers(self, rounds: int = 5) -> None:
        for _ in range(rounds):
            left = self.leftovers()
            if not left:
                return
            _kill_pids([p.pid for p in left])
            psutil.wait_procs(left, timeout=5)

    # -- observation -------------------------------------------------------------------------------------------

    def processes(self) -> list[ProcInfo]:
        """Every live process of the stack with its role."""
        out: list[ProcInfo] = []
        for name, popen in self.procs.items():
            if popen.poll() is not None:
                continue
            try:
                root = psutil.Process(popen.pid)
            except psutil.Error:
                continue
            roles = {root.pid: name}
            out.append(ProcInfo(root.pid, name, name, _title(root), os.getppid()))
            for child in _descendants(root.pid):
                try:
                    ppid = child.ppid()
                    create = child.create_time()
                except psutil.Error:
                    continue
                self._seen[child.pid] = create
                title = _title(child)
                if not title:
                    continue
                role = self.classify(name, child, title, roles.get(ppid, ""))
                roles[child.pid] = role
                out.append(ProcInfo(child.pid, role, name, title, ppid))
        return out

    def pids(self, role: str) -> list[int]:
        return [p.pid for p in self.processes() if p.role == role]

    def workers(self) -> list[ProcInfo]:
        return [p for p in self.processes() if p.role == "worker"]

    def start_sampler(self, interval: float = 5.0, roles: Iterable[str] | None = None) -> Sampler:
        self.sampler = Sampler(self, interval=interval, roles=roles)
        self.sampler.start()
        return self.sampler

    def _age_lines(self) -> dict[int, list[list[str]]]:
        out: dict[int, list[list[str]]] = {}
        if self.home is None or not self.age_log_dir.exists():
            return out
        for f in self.age_log_dir.iterdir():
            with contextlib.suppress(OSError, ValueError):
                out[int(f.name)] = [line.split() for line in f.read_text().splitlines() if line.strip()]
        return out

    def collections(self) -> dict[int, int]:
        """pid -> number of forced full collections the aging thread has run in it so far."""
        return {pid: sum(1 for ln in lines if ln[0] != "0") for pid, lines in self._age_lines().items()}

    def fork_uss(self) -> dict[int, int]:
        """pid -> USS in bytes measured by the child itself right after it was forked (aging on only)."""
        out = {}
        for pid, lines in self._age_lines().items():
            for ln in lines:
                if ln[0] == "0" and len(ln) >= 4 and int(ln[3]) >= 0:
                    out[pid] = int(ln[3])
        return out

    def collection_log(self) -> dict[int, list[tuple[float, float]]]:
        """pid -> [(wall time, duration in s)] of the forced full collections the aging thread ran in it."""
        return {
            pid: [(float(ln[2]), float(ln[1])) for ln in lines if ln[0] != "0" and len(ln) >= 3]
            for pid, lines in self._age_lines().items()
        }

    # -- metadata DB -------------------------------------------------------------------------------------------

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        """Run a read-only query on the metadata DB (sqlite3 / psycopg2 from the orchestrator's venv)."""
        if self.cfg.backend == "sqlite":
            import sqlite3

            assert self.home
            conn = sqlite3.connect(f"file:{self.home / 'airflow.db'}?mode=ro", uri=True, timeout=30)
            try:
                return conn.execute(sql.replace("%s", "?"), params).fetchall()
            finally:
                conn.close()
        import psycopg2

        conn = psycopg2.connect(f"{self.cfg.pg_url}/{self._pg_db}", connect_timeout=10)
        try:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                return cur.fetchall()
        finally:
            conn.close()

    def execute(self, sql: str, params: tuple = ()) -> int:
        """Run one write statement on the metadata DB (e.g. pause a DAG the way `airflow dags pause` does)."""
        if self.cfg.backend == "sqlite":
            import sqlite3

            assert self.home
            conn = sqlite3.connect(str(self.home / "airflow.db"), timeout=60)
            try:
                with conn:
                    return conn.execute(sql.replace("%s", "?"), params).rowcount
            finally:
                conn.close()
        import psycopg2

        conn = psycopg2.connect(f"{self.cfg.pg_url}/{self._pg_db}", connect_timeout=10)
        try:
            with conn, conn.cursor() as cur:
                cur.execute(sql, params)
                return cur.rowcount
        finally:
            conn.close()

    def set_paused(self, dag_id: str, paused: bool = True) -> None:
        """Pause/unpause a DAG directly in the metadata DB (what `airflow dags pause` does, without its start-up)."""
        if self.execute("UPDATE dag SET is_paused = %s WHERE dag_id = %s", (paused, dag_id)) != 1:
            raise StackError(f"no DAG {dag_id!r} to (un)pause")

    def task_counts(self, dag_prefix: str | None = None) -> dict[str, int]:
        """Task instances by state (current try), plus 'retried' = earlier tries kept in task_instance_history."""
        where, params = "", ()
        if dag_prefix:
            where, params = " WHERE dag_id LIKE %s", (dag_prefix + "%",)
        rows = self.query(f"SELECT state, count(*) FROM task_instance{where} GROUP BY state", params)
        out = {str(state): n for state, n in rows}
        try:
            rows = self.query(f"SELECT count(*) FROM task_instance_history{where}", params)
            out["retried"] = rows[0][0]
        except Exception:  # noqa: BLE001 - a base without task_instance_history: no retries to count
            out["retried"] = 0
        return out

    def wait_for(self, predicate: Callable[[], bool], timeout: float, what: str, poll: float = 2.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            with contextlib.suppress(Exception):
                if predicate():
                    return
            if time.monotonic() > deadline:
                raise StackError(f"[{self.cfg.label}] timed out after {timeout:.0f}s waiting for {what}")
            time.sleep(poll)

    def wait_for_task_runs(
        self, n: int, timeout: float = 300, dag_prefix: str | None = None
    ) -> dict[str, int]:
        self.wait_for(
            lambda: self.task_counts(dag_prefix).get("success", 0) >= n, timeout, f"{n} successful task runs"
        )
        return self.task_counts(dag_prefix)

    def airflow_cli(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        """Run ``airflow <args>`` against this stack (e.g. ``dags trigger``)."""
        proc = subprocess.run(  # noqa: PLW1510 - callers check returncode and show the output
            [str(self.airflow), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            start_new_session=True,
            cwd=self.home,
        )
        return proc


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _kill_group(pgid: int) -> None:
    _signal_group(pgid, signal.SIGKILL)


def tail(path: Path | None, n: int = 60) -> str:
    if path is None or not Path(path).exists():
        return "(no log)"
    lines = Path(path).read_text(errors="replace").splitlines()
    return "\n".join(lines[-n:])


def mib(n: float) -> float:
    return n / (1024 * 1024)


if __name__ == "__main__":  # pragma: no cover - manual smoke run
    import argparse

    ap = argparse.ArgumentParser(description="start a stack, sample it, print per-process memory, stop it")
    ap.add_argument("venv", type=Path)
    ap.add_argument("--backend", default="sqlite")
    ap.add_argument("--duration", type=float, default=60)
    ap.add_argument("--age", type=float, default=20)
    ap.add_argument("--parallelism", type=int, default=4)
    a = ap.parse_args()
    with Stack(
        StackConfig(
            venv=a.venv, backend=a.backend, age_interval=a.age, parallelism=a.parallelism, label=a.venv.name
        ),
        log=print,
    ) as st:
        st.start_sampler(interval=5)
        end = time.monotonic() + a.duration
        while time.monotonic() < end:
            st.check_alive()
            time.sleep(10)
            print(
                f"{time.monotonic() - st.t0:6.0f}s",
                st.task_counts(),
                {p.role for p in st.processes()},
                st.collections(),
                file=sys.stderr,
            )
        for pid, ss in st.sampler.by_pid().items():
            print(
                pid,
                ss[0].role,
                f"PSS {mib(ss[0].pss):.1f}->{mib(ss[-1].pss):.1f}",
                f"USS {mib(ss[0].uss):.1f}->{mib(ss[-1].uss):.1f}",
                len(ss),
            )
