"""Stack: start, observe and stop a real Airflow stack from a given venv.

It runs the same ``airflow`` commands an operator runs -- ``db migrate``, ``api-server``, ``dag-processor``,
``scheduler`` (and whatever extra components an executor needs, e.g. ``celery worker``) -- each in its own
session/process group, with all configuration as ``AIRFLOW__SECTION__KEY`` environment variables and a throw-away
AIRFLOW_HOME. The jobs live in sibling modules: configuration (config), process groups and stopping (procs),
sampling, metadata counts (metadata), aging (aging), the signal safety net (safety).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path

import psutil

from memseries.stack import aging, safety
from memseries.stack.config import Component, StackConfig, StackError, default_config, free_port
from memseries.stack.metadata import MetadataDB
from memseries.stack.procs import ProcessGroups, ProcInfo, default_classify, tail
from memseries.stack.sampling import Sampler


class Stack:
    """A running Airflow stack. Use as a context manager::

    with Stack(StackConfig(venv=Path(".venv/airflow-3.3.2"))) as st:
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
        self.groups = ProcessGroups()
        self.procs = self.groups.procs  # component name -> Popen of its session leader
        self.logfiles: dict[str, Path] = {}
        self.db: MetadataDB | None = None
        self.t0 = time.monotonic()
        self.started_wall = 0.0
        self.stopped = False
        self._stop_lock = threading.RLock()
        self.sampler: Sampler | None = None

    # -- paths -------------------------------------------------------------------------------------------------

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

    @property
    def db_uri(self) -> str:
        return self.db.uri if self.db else ""

    @property
    def _sids(self) -> set[int]:
        return self.groups.sids

    # -- start -------------------------------------------------------------------------------------------------

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
        self.home = Path(tempfile.mkdtemp(prefix=f"memseries-stack-{self.cfg.label or self.venv.name}-",
                                          dir=self.cfg.home_parent))
        (self.home / "logs").mkdir()
        self.dags_dir.mkdir()
        self.age_log_dir.mkdir()
        aging.install(self.home / "memseries-site")
        for src in map(Path, self.cfg.dags):
            for f in sorted(src.glob("*.py")) if src.is_dir() else [src]:
                shutil.copy2(f, self.dags_dir / f.name)

    def _prepare_db(self) -> None:
        assert self.home
        self.db = MetadataDB(self.cfg.backend, self.home, self.cfg.pg_url)

    def _build_env(self) -> dict[str, str]:
        assert self.home
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("AIRFLOW") and k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
        env.update({
            "AIRFLOW_HOME": str(self.home),
            "VIRTUAL_ENV": str(self.venv),
            "PATH": f"{self.venv / 'bin'}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}",
            "PYTHONPATH": str(self.home / "memseries-site"),
            "PYTHONUNBUFFERED": "1",
            aging.AGE_ENV: str(self.cfg.age_interval or 0),
            aging.AGE_LOG_ENV: str(self.age_log_dir),
        })
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
        safety.register(self)
        self.t0 = time.monotonic()
        self.started_wall = time.time()
        self.port = free_port()
        self._prepare_home()
        self._prepare_db()
        self.env = self._build_env()
        self.log(f"[{self.cfg.label}] AIRFLOW_HOME={self.home} db={self.cfg.backend} port={self.port}")
        self.migrate()
        comps = [Component(n, self.component_argv(n)) for n in self.cfg.components]
        for comp in comps + list(self.cfg.extra_components):
            self.start_component(comp)
        if "api-server" in self.procs:
            self.wait_api()  # the others start meanwhile: tasks need the API, parsing and scheduling don't
        self.t0 = time.monotonic()
        return self

    def migrate(self) -> None:
        assert self.home
        logf = self.home / "logs" / "db-migrate.log"
        proc = self.groups.popen([str(self.airflow), "db", "migrate"], self.env, logf)
        try:
            rc = proc.wait(timeout=self.cfg.migrate_timeout)
        except subprocess.TimeoutExpired:
            self.groups.kill([proc])
            raise StackError(f"`airflow db migrate` timed out; log: {logf}") from None
        if rc != 0:
            raise StackError(f"`airflow db migrate` failed (exit {rc}):\n{tail(logf)}")

    def start_component(self, comp: Component) -> subprocess.Popen:
        assert self.home
        logf = self.home / "logs" / f"{comp.name}.log"
        proc = self.groups.popen(comp.argv, {**self.env, **comp.env}, logf, cwd=self.home)
        self.procs[comp.name] = proc
        self.logfiles[comp.name] = logf
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
        raise StackError(f"api-server did not answer on port {self.port}:\n{tail(self.logfiles['api-server'])}")

    def check_alive(self, names: Iterable[str] | None = None) -> None:
        for name in names or list(self.procs):
            proc = self.procs.get(name)
            if proc is not None and proc.poll() is not None:
                raise StackError(f"[{self.cfg.label}] {name} exited with {proc.returncode}:\n{tail(self.logfiles[name])}")

    # -- stop --------------------------------------------------------------------------------------------------

    def stop_component(self, name: str, grace: float | None = None) -> int | None:
        proc = self.procs.get(name)
        if proc is None:
            return None
        self.groups.stop([name], self.cfg.stop_grace if grace is None else grace)
        return proc.returncode

    def stop(self, grace: float | None = None) -> None:
        """Stop everything (every group at once); idempotent. A signal meanwhile runs a nested stop or kill."""
        with self._stop_lock:
            if self.stopped:
                return
            try:
                if self.sampler is not None:
                    self.sampler.stop()
                self.groups.stop(grace=self.cfg.stop_grace if grace is None else grace)
                self.groups.kill_leftovers()
            finally:
                self.stopped = True
                if self.db is not None:
                    with contextlib.suppress(Exception):
                        self.db.drop()
                if self.home and not self.cfg.keep_home:
                    shutil.rmtree(self.home, ignore_errors=True)
                safety.unregister(self)

    def kill_now(self) -> None:
        """SIGKILL everything at once, no grace (a second Ctrl-C); `stop()` still cleans up after it."""
        self.groups.kill_now()

    def leftovers(self) -> list[psutil.Process]:
        return self.groups.leftovers()

    def kill_leftovers(self, rounds: int = 5) -> None:
        self.groups.kill_leftovers(rounds)

    # -- observation -------------------------------------------------------------------------------------------

    def processes(self) -> list[ProcInfo]:
        """Every live process of the stack with its role."""
        return self.groups.tree(self.classify)

    def pids(self, role: str) -> list[int]:
        return [p.pid for p in self.processes() if p.role == role]

    def workers(self) -> list[ProcInfo]:
        return [p for p in self.processes() if p.role == "worker"]

    def start_sampler(self, interval: float = 5.0, roles: Iterable[str] | None = None) -> Sampler:
        self.sampler = Sampler(self, interval=interval, roles=roles)
        self.sampler.start()
        return self.sampler

    def _age_log(self) -> aging.AgeLog:
        return aging.AgeLog(self.age_log_dir if self.home else None)

    def collections(self) -> dict[int, int]:
        return self._age_log().collections()

    def fork_uss(self) -> dict[int, int]:
        return self._age_log().fork_uss()

    def collection_log(self) -> dict[int, list[tuple[float, float]]]:
        return self._age_log().collection_log()

    # -- metadata DB -------------------------------------------------------------------------------------------

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        assert self.db
        return self.db.query(sql, params)

    def execute(self, sql: str, params: tuple = ()) -> int:
        assert self.db
        return self.db.execute(sql, params)

    def set_paused(self, dag_id: str, paused: bool = True) -> None:
        assert self.db
        self.db.set_paused(dag_id, paused)

    def task_counts(self, dag_prefix: str | None = None) -> dict[str, int]:
        assert self.db
        return self.db.task_counts(dag_prefix)

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

    def wait_for_task_runs(self, n: int, timeout: float = 300, dag_prefix: str | None = None) -> dict[str, int]:
        self.wait_for(lambda: self.task_counts(dag_prefix).get("success", 0) >= n, timeout, f"{n} successful task runs")
        return self.task_counts(dag_prefix)

    def airflow_cli(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        """Run ``airflow <args>`` against this stack (e.g. ``dags trigger``)."""
        return subprocess.run([str(self.airflow), *args], env=self.env, capture_output=True, text=True,  # noqa: PLW1510
                              timeout=timeout, start_new_session=True, cwd=self.home)
