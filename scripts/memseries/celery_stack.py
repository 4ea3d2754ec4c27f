"""A CeleryExecutor stack on top of :mod:`memseries.stack`: broker, result backend and N ``airflow celery worker``.

``memseries.stack.Stack`` starts api-server, dag-processor and scheduler (each in its own session, temp
AIRFLOW_HOME, throw-away PostgreSQL database, aging sitecustomize) and guarantees that nothing survives it. This
module only adds what CeleryExecutor needs, by composition/subclassing (it does not change ``stack.py``):

- ``[core] executor = CeleryExecutor``, ``[celery] broker_url`` (Redis DB 5 by default, or RabbitMQ),
  ``[celery] result_backend = db+<the stack's PostgreSQL database>``;
- ``workers`` x ``airflow celery worker --celery-hostname NAME --concurrency N --skip-serve-logs`` as extra
  components (own session each, so a whole worker -- main process, prefork pool, task processes -- can be
  SIGKILLed like a lost machine with :meth:`CeleryStack.kill_worker`);
- every worker records its own name as ``task_instance.hostname`` (``[core] hostname_callable`` points at a
  tiny module the harness drops next to its sitecustomize) -- all workers run on one machine here, and the
  default callable (FQDN) would make them indistinguishable;
- the Redis DB is flushed before start and after stop (use a DB number nobody else uses: ``redis_db``);
- process roles for sampling: ``pool`` (a worker's prefork ``ForkPoolWorker`` children, long-lived),
  ``task`` (the task processes they fork per task), ``celery-worker-child`` (anything else a worker starts).

Control switch (benchmarks only): ``unfreeze_pool=True`` undoes, in each pool process right after the fork,
the ``gc.freeze()`` the celery provider does before its prefork pool forks -- i.e. shows what a pool process
would cost without that freeze.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import socket
import subprocess
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterable
from pathlib import Path

import psutil

from memseries.stack import Component, Stack, StackConfig, StackError, default_classify, tail

#: a Redis DB number of its own (flushed before start and after stop); each stack also uses its own queue name, so
#: two stacks sharing a broker never take each other's tasks
DEFAULT_REDIS_DB = int(os.environ.get("MEMSERIES_CELERY_REDIS_DB", "13"))
DEFAULT_BROKER = os.environ.get("MEMSERIES_CELERY_BROKER", f"redis://127.0.0.1:6379/{DEFAULT_REDIS_DB}")
WORKER_PREFIX = "celery-worker-"
HOSTNAME_ENV = "MEMSERIES_CELERY_HOSTNAME"
UNFREEZE_ENV = "MEMSERIES_CELERY_UNFREEZE_POOL"
LOG_ENV = "MEMSERIES_CELERY_LOG_DIR"

#: dropped into the stack's memseries-site/ (on every component's PYTHONPATH); harness only, never a patch
CELERY_SITE_MODULE = r'''\
"""memseries harness only: per-worker TI hostname, and the no-freeze control for benchmarks."""
import os
import socket
import subprocess


def hostname():
    """[core] hostname_callable: the name the harness gave this celery worker (all run on one machine)."""
    return os.environ.get("MEMSERIES_CELERY_HOSTNAME") or socket.getfqdn()


_LOG_DIR = os.environ.get("MEMSERIES_CELERY_LOG_DIR") or ""


def _log(name, line):
    # os-level I/O only: no Python locks that a later fork could inherit held
    try:
        fd = os.open(os.path.join(_LOG_DIR, name), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)
    except OSError:
        pass


def _uss():
    # Private_Clean + Private_Dirty of /proc/self/smaps_rollup, bytes
    try:
        with open("/proc/self/smaps_rollup", "rb") as f:
            data = f.read()
        return sum(
            int(line.split()[1]) * 1024
            for line in data.split(b"\n")
            if line.startswith((b"Private_Clean:", b"Private_Dirty:"))
        )
    except (OSError, ValueError):
        return -1


if _LOG_DIR and os.environ.pop("MEMSERIES_CELERY_WORKER_MAIN", "") == "1":
    # imported in the worker's main process (celery_config_options) before it forks anything; popped, so no
    # process started later takes itself for the main process
    import gc
    import sys
    import time

    _memseries_main_pid = os.getpid()
    _t0 = [0.0]

    def _memseries_main_gc(phase, info):
        # the worker main process's full collections (celery's pre-fork gc.collect() among them): wall, s
        if info.get("generation") != 2 or os.getpid() != _memseries_main_pid:
            return
        if phase == "start":
            _t0[0] = time.perf_counter()
        else:
            _log(
                "main-%d" % _memseries_main_pid,
                "%.3f %.6f %d\n" % (time.time(), time.perf_counter() - _t0[0], gc.get_freeze_count()),
            )

    gc.callbacks.append(_memseries_main_gc)

    _probe = os.environ.get("MEMSERIES_CELERY_PROBE_DELAY")
    _probe_delay = float(_probe) if _probe else None

    def _memseries_kind():
        # who forked: billiard (a prefork pool process) or the stdlib's multiprocessing (the worker's helpers)
        f = sys._getframe(1)
        while f is not None:
            name = f.f_globals.get("__name__", "")
            if name.startswith("billiard."):
                return "pool"
            if name.startswith("multiprocessing."):
                return "helper"
            f = f.f_back
        return "other"

    def _memseries_probe(delay, main_pid, kind):
        # one full collection in a child of the worker's main process, `delay` s after its fork (0: in the fork
        # hook itself, before the child runs anything, so no task child can share or unshare pages meanwhile):
        # how much of what it shares does it copy? line: wall ppid freeze_count uss_before uss_after s kind
        if delay:
            time.sleep(delay)
        before = _uss()
        t = time.perf_counter()
        gc.collect()
        d = time.perf_counter() - t
        after = _uss()
        _log(
            "probe-%d" % os.getpid(),
            "%.3f %d %d %d %d %.6f %s\n" % (time.time(), main_pid, gc.get_freeze_count(), before, after, d, kind),
        )

    def _memseries_after_fork():
        if os.getppid() != _memseries_main_pid:
            return  # only the worker's own children (pool processes, helpers), not task processes
        _log("fork-%d" % os.getpid(), "%.3f %d\n" % (time.time(), gc.get_freeze_count()))
        if _probe_delay is None:
            return
        kind = _memseries_kind()
        if _probe_delay <= 0:
            _memseries_probe(0, _memseries_main_pid, kind)
        else:
            import threading

            threading.Thread(
                target=_memseries_probe, args=(_probe_delay, _memseries_main_pid, kind), daemon=True
            ).start()

    os.register_at_fork(after_in_child=_memseries_after_fork)

    from celery.signals import task_postrun as _memseries_task_postrun

    @_memseries_task_postrun.connect(weak=False)
    def _memseries_task_done(**kwargs):
        # a pool process finished a task (its task process has exited): the bench tells the pool processes that
        # ran tasks from those that ran none, and how many. line: wall uss (bytes, measured by itself)
        if os.getppid() == _memseries_main_pid:
            _log("task-%d" % os.getpid(), "%.3f %d\n" % (time.time(), _uss()))


if os.environ.get("MEMSERIES_CELERY_UNFREEZE_POOL") == "1":
    # control: undo the provider's pre-fork gc.freeze() in every prefork pool process right after the fork
    import gc

    from celery.signals import worker_process_init

    @worker_process_init.connect(weak=False)
    def _memseries_unfreeze(**kwargs):
        gc.unfreeze()



def __getattr__(name):
    # [celery] celery_config_options = memseries_celery.CELERY_CONFIG (every harness worker): the provider's own
    # default config (it includes [celery] extra_celery_config); naming it here loads this module in the main
    # process. Lazy, so the task processes that import this module for hostname() do not import the provider.
    if name == "CELERY_CONFIG":
        from airflow.providers.celery.executors.default_celery import DEFAULT_CELERY_CONFIG

        return DEFAULT_CELERY_CONFIG
    raise AttributeError(name)
'''


@dataclasses.dataclass
class CeleryOptions:
    workers: int = 2
    concurrency: int = 2
    broker_url: str = DEFAULT_BROKER
    #: extra ``airflow celery worker`` arguments
    worker_args: list[str] = dataclasses.field(default_factory=list)
    #: benchmark control: undo the provider's pre-fork gc.freeze() inside each pool process
    unfreeze_pool: bool = False
    #: celery's ``worker_max_tasks_per_child`` (through ``[celery] extra_celery_config``): recycle pool processes
    max_tasks_per_child: int | None = None
    #: ``--autoscale MAX,MIN``
    autoscale: str | None = None
    #: argv prefix for every ``airflow celery worker`` (e.g. a wrapper that changes what it inherits)
    worker_prefix: list[str] = dataclasses.field(default_factory=list)
    #: every child the worker's main process forks (pool processes, helpers) runs one full gc.collect() this
    #: many seconds after its fork (0: in the fork hook, before it runs anything) and logs its USS right before
    #: and after it (:meth:`CeleryStack.probes`); None: no probe
    probe_delay: float | None = None
    #: seconds to wait for every worker to log "ready"
    ready_timeout: float = 180.0
    #: start the stack's psutil sampler as soon as the components are started (before the workers are ready),
    #: so a pool process's first samples predate its first forced collection; None: the caller starts it
    sample_interval: float | None = None
    sample_roles: list[str] | None = None


def celery_classify(component: str, proc: psutil.Process, title: str, parent_role: str) -> str:
    if not component.startswith(WORKER_PREFIX):
        return default_classify(component, proc, title, parent_role)
    if parent_role in ("pool", "task"):
        return "task"  # forked by a pool process's task supervisor (or below it)
    # a prefork pool process: billiard titles it "[celeryd: NAME:ForkPoolWorker-N]"; Airflow >= 3.3 retitles it
    # "airflow supervisor: ..." when it runs a task (and never back); the provider's pre-3.3 path "airflow task
    # supervisor: ..." (Airflow 2 only). Anything else the worker's main process starts (the stale-bundle cleanup
    # helper, serve-logs) is a helper.
    if parent_role == component and (
        "ForkPoolWorker" in title or title.startswith(("airflow supervisor:", "airflow task supervisor:"))
    ):
        return "pool"
    return "celery-worker-child"


def redis_command(url: str, *commands: list[str], timeout: float = 10.0) -> list[bytes]:
    """Send RESP commands to the Redis of ``url`` (after SELECT of its DB); returns the raw reply lines."""
    u = urllib.parse.urlparse(url)
    db = (u.path or "/0").strip("/") or "0"
    cmds = [["SELECT", db], *commands]
    if u.password:
        cmds.insert(0, ["AUTH", *([u.username] if u.username else []), u.password])
    payload = b"".join(
        f"*{len(c)}\r\n".encode() + b"".join(f"${len(a.encode())}\r\n{a}\r\n".encode() for a in c)
        for c in cmds
    )
    with socket.create_connection((u.hostname or "127.0.0.1", u.port or 6379), timeout=timeout) as s:
        s.sendall(payload)
        buf = b""
        while buf.count(b"\r\n") < len(cmds):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    lines = buf.split(b"\r\n")[: len(cmds)]
    bad = [line for line in lines if line.startswith(b"-")]
    if bad:
        raise StackError(f"redis {url}: {bad[0].decode(errors='replace')}")
    return lines


class CeleryStack(Stack):
    """``Stack`` + CeleryExecutor + ``options.workers`` celery workers (PostgreSQL only: result backend)."""

    def __init__(self, config: StackConfig, celery: CeleryOptions | None = None, log=None):
        config.executor = "CeleryExecutor"
        if config.backend != "postgres":
            raise StackError(
                "the CeleryExecutor stack needs backend='postgres' (metadata DB + result backend)"
            )
        # PyJWT 2.10+ (the constraints pin 2.15) refuses `iss: None`, which 3.1.3's GET /auth/token (simple auth
        # manager, all admins) produces when no issuer is configured -> HTTP 500. An issuer fixes it.
        config.config.setdefault(("api_auth", "jwt_issuer"), "memseries-stack")
        super().__init__(config, classify=celery_classify, log=log)
        self.celery = celery or CeleryOptions()
        self.run_id = uuid.uuid4().hex[:8]
        self.queue = f"memseries-{self.run_id}"
        #: component name -> the hostname its tasks record on their TaskInstance
        self.worker_hostnames: dict[str, str] = {}
        self.killed: set[str] = set()

    # -- lifecycle ---------------------------------------------------------------------------------------------

    @property
    def uses_redis(self) -> bool:
        return self.celery.broker_url.startswith(("redis://", "rediss://"))

    def flush_broker(self) -> None:
        """Redis: FLUSHDB of the stack's own DB. AMQP (RabbitMQ): delete the stack's queue (after a run)."""
        if self.uses_redis:
            redis_command(self.celery.broker_url, ["FLUSHDB"])
        elif self.celery.broker_url.startswith(("amqp://", "pyamqp://")) and self.procs:
            code = (
                "import sys, kombu\n"
                "with kombu.Connection(sys.argv[1]) as c:\n"
                "    c.default_channel.queue_delete(sys.argv[2])\n"
            )
            subprocess.run(
                [str(self.python), "-c", code, self.celery.broker_url, self.queue],
                check=False,
                capture_output=True,
                timeout=60,
                start_new_session=True,
            )

    def _prepare_home(self) -> None:
        super()._prepare_home()
        assert self.home
        (self.home / "memseries-site" / "memseries_celery.py").write_text(CELERY_SITE_MODULE)
        self.celery_log_dir.mkdir(exist_ok=True)

    @property
    def celery_log_dir(self) -> Path:
        assert self.home
        return self.home / "memseries-celery"

    def _celery_lines(self, prefix: str) -> dict[int, list[list[str]]]:
        out: dict[int, list[list[str]]] = {}
        if self.home is None or not self.celery_log_dir.exists():
            return out
        for f in self.celery_log_dir.glob(f"{prefix}-*"):
            with contextlib.suppress(OSError, ValueError):
                out[int(f.name.split("-", 1)[1])] = [
                    ln.split() for ln in f.read_text().splitlines() if ln.strip()
                ]
        return out

    def main_collections(self) -> dict[int, list[tuple[float, float, int]]]:
        """worker main pid -> [(wall, seconds, gc freeze count)] of each full collection it ran (pre-fork ones too)."""
        return {
            pid: [(float(a), float(b), int(c)) for a, b, c in lines]
            for pid, lines in self._celery_lines("main").items()
        }

    def forks(self) -> dict[int, tuple[float, int]]:
        """pid of a child of a worker's main process -> (wall time of its fork, gc freeze count inherited)."""
        return {
            pid: (float(lines[0][0]), int(lines[0][1]))
            for pid, lines in self._celery_lines("fork").items()
            if lines
        }

    def tasks_done(self) -> dict[int, list[tuple[float, int]]]:
        """pool pid -> [(wall, its own USS in bytes)] at the end of each task it ran (celery's task_postrun)."""
        return {
            pid: [(float(a), int(b)) for a, b in lines] for pid, lines in self._celery_lines("task").items()
        }

    def probes(self) -> dict[int, dict]:
        """pid -> its probe (``probe_delay``): kind (pool/helper), main pid, freeze count, USS before/after one
        full collection, its duration in s."""
        out = {}
        for pid, lines in self._celery_lines("probe").items():
            if lines:
                w, main, fc, before, after, d, kind = lines[0]
                out[pid] = {
                    "kind": kind,
                    "wall": float(w),
                    "main": int(main),
                    "freeze_count": int(fc),
                    "uss_before": int(before),
                    "uss_after": int(after),
                    "collect_s": float(d),
                }
        return out

    def _build_env(self) -> dict[str, str]:
        env = super()._build_env()
        env["AIRFLOW__CELERY__BROKER_URL"] = self.celery.broker_url
        env["AIRFLOW__CELERY__RESULT_BACKEND"] = "db+" + self.db_uri
        env.setdefault("AIRFLOW__CELERY__WORKER_CONCURRENCY", str(self.celery.concurrency))
        env["AIRFLOW__OPERATORS__DEFAULT_QUEUE"] = self.queue
        env[LOG_ENV] = str(self.celery_log_dir)
        return env

    def worker_components(self) -> list[Component]:
        comps = []
        for i in range(1, self.celery.workers + 1):
            name = f"{WORKER_PREFIX}{i}"
            host = f"memseries-w{i}-{self.run_id}"
            self.worker_hostnames[name] = host
            env = {
                HOSTNAME_ENV: host,
                "AIRFLOW__CORE__HOSTNAME_CALLABLE": "memseries_celery.hostname",
                # loads memseries_celery in the worker's main process: its full collections, its children's probes
                "AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS": "memseries_celery.CELERY_CONFIG",
                "MEMSERIES_CELERY_WORKER_MAIN": "1",
            }
            if self.celery.probe_delay is not None:
                env["MEMSERIES_CELERY_PROBE_DELAY"] = str(self.celery.probe_delay)
            if self.celery.max_tasks_per_child:
                env["AIRFLOW__CELERY__EXTRA_CELERY_CONFIG"] = json.dumps(
                    {"worker_max_tasks_per_child": self.celery.max_tasks_per_child}
                )
            if self.celery.unfreeze_pool:
                env[UNFREEZE_ENV] = "1"
            argv = [
                *self.celery.worker_prefix,
                str(self.airflow),
                "celery",
                "worker",
                "--celery-hostname",
                host,
                "--concurrency",
                str(self.celery.concurrency),
                "--skip-serve-logs",
                "--queues",
                self.queue,
                "--pid",
                f"airflow-{name}.pid",  # relative to the cwd = AIRFLOW_HOME; one per worker
                *(["--autoscale", self.celery.autoscale] if self.celery.autoscale else []),
                *self.celery.worker_args,
            ]
            comps.append(Component(name, argv, env))
        return comps

    def start(self) -> CeleryStack:
        if self.uses_redis:
            try:
                self.flush_broker()
            except OSError as e:
                raise StackError(f"Redis broker {self.celery.broker_url} not reachable: {e}") from e
        self.cfg.extra_components = [
            c for c in self.cfg.extra_components if not c.name.startswith(WORKER_PREFIX)
        ] + self.worker_components()
        super().start()
        if self.celery.sample_interval:
            self.start_sampler(interval=self.celery.sample_interval, roles=self.celery.sample_roles)
        self.wait_workers_ready()
        return self

    def wait_workers_ready(self, names: Iterable[str] | None = None, timeout: float | None = None) -> None:
        names = list(names or self.worker_hostnames)

        def ready() -> bool:
            return all(" ready." in self.logfiles[n].read_text(errors="replace") for n in names)

        self.wait_for(ready, timeout or self.celery.ready_timeout, f"celery workers {names} ready", poll=1.0)

    def stop(self, grace: float = 20.0) -> None:
        try:
            super().stop(grace=grace)
        finally:
            with contextlib.suppress(Exception):
                self.flush_broker()

    def check_alive(self, names: Iterable[str] | None = None) -> None:
        names = [n for n in (names or list(self.procs)) if n not in self.killed]
        super().check_alive(names)

    # -- workers -----------------------------------------------------------------------------------------------

    def worker_tree(self, name: str) -> list[psutil.Process]:
        """The worker's main process and all its descendants."""
        try:
            root = psutil.Process(self.procs[name].pid)
            return [root, *root.children(recursive=True)]
        except psutil.Error:
            return []

    def kill_worker(self, name: str) -> list[int]:
        """SIGKILL a whole celery worker (main process, pool, task processes) at once, like a lost machine."""
        procs = self.worker_tree(name)
        self.killed.add(name)
        pgid = self.procs[name].pid
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        for p in procs:  # anything that left the process group
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(procs, timeout=10)
        with contextlib.suppress(Exception):
            self.procs[name].wait(timeout=10)
        return [p.pid for p in procs]

    def pools(self) -> dict[str, list[int]]:
        """worker component -> pids of its prefork pool processes."""
        out: dict[str, list[int]] = {n: [] for n in self.worker_hostnames}
        for p in self.processes():
            if p.role == "pool":
                out.setdefault(p.component, []).append(p.pid)
        return out

    def worker_log(self, name: str, n: int = 40) -> str:
        return tail(self.logfiles.get(name), n)

    # -- REST API (cheaper than an `airflow dags trigger` process per run on a 2-core box) -----------------------

    def api(self, method: str, path: str, body: dict | None = None, timeout: float = 60) -> dict:
        """Call the stack's REST API (simple auth manager, all admins: token from GET /auth/token)."""
        base = f"http://127.0.0.1:{self.port}"
        if not getattr(self, "_token", None):
            with urllib.request.urlopen(f"{base}/auth/token", timeout=timeout) as r:
                self._token = json.load(r)["access_token"]
        req = urllib.request.Request(
            f"{base}{path}",
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"Bearer {self._token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=timeout) as r:
            data = r.read()
        return json.loads(data) if data else {}

    def trigger(self, dag_id: str, run_id: str | None = None) -> str:
        """Create a manual DAG run through the API; returns its run_id."""
        body: dict = {"logical_date": None}
        if run_id:
            body["dag_run_id"] = run_id
        return self.api("POST", f"/api/v2/dags/{dag_id}/dagRuns", body)["dag_run_id"]

    def wait_dags_parsed(self, dag_ids: Iterable[str], timeout: float = 120) -> None:
        dag_ids = list(dag_ids)

        def parsed() -> bool:
            rows = self.query("SELECT dag_id FROM serialized_dag WHERE dag_id = ANY(%s)", (dag_ids,))
            return {r[0] for r in rows} >= set(dag_ids)

        self.wait_for(parsed, timeout, f"DAGs {dag_ids} parsed", poll=1.0)


__all__ = ["CeleryOptions", "CeleryStack", "celery_classify", "redis_command"]
