"""Process groups: every component runs in its own session; a stop signals every group AT ONCE, then waits.

Stopping the components one after the other made Ctrl-C of the demo take ~26 s (a LocalExecutor scheduler's
`end()` alone waits ~20 s for queued work). Here all groups get SIGTERM together, the stop waits at most one
grace period for all of them, then SIGKILLs every group and every process left in the stack's sessions or
recorded as a descendant (orphans re-parented to init included). `kill_now()` skips the grace: a second Ctrl-C.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

import psutil

WORKER_TITLE = "airflow worker -- LocalExecutor"


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


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def live_children(proc: psutil.Process) -> int:
    """Children that are not zombies (a zombie shares no pages: it does not distort its parent's USS/PSS)."""
    n = 0
    for child in proc.children():
        with contextlib.suppress(psutil.Error):
            if child.status() != psutil.STATUS_ZOMBIE:
                n += 1
    return n


def getsid(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None


def title(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline()).strip()  # setproctitle pads the title with spaces over the old argv area
    except psutil.Error:
        return ""


def signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def kill_pids(pids: Iterable[int], sig: int = signal.SIGKILL) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def tail(path: Path | None, n: int = 60) -> str:
    if path is None or not Path(path).exists():
        return "(no log)"
    return "\n".join(Path(path).read_text(errors="replace").splitlines()[-n:])


class ProcessGroups:
    """The stack's own sessions: start a command in a new one, observe them, stop them all together."""

    def __init__(self) -> None:
        self.procs: dict[str, subprocess.Popen] = {}  # component name -> its session leader
        self.sids: set[int] = set()
        self.seen: dict[int, float] = {}  # pid -> create_time of every descendant ever seen

    def popen(self, argv: list[str], env: dict, logfile: Path, cwd: Path | None = None) -> subprocess.Popen:
        with open(logfile, "ab") as out:
            proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, cwd=cwd)
        self.sids.add(proc.pid)
        return proc

    def remember_descendants(self) -> None:
        for proc in self.procs.values():
            for child in descendants(proc.pid):
                with contextlib.suppress(psutil.Error):
                    self.seen[child.pid] = child.create_time()

    def stop(self, names: Iterable[str] | None = None, grace: float = 8.0) -> None:
        """SIGTERM every group at once, wait up to `grace` for all of them, then SIGKILL the groups."""
        chosen = [self.procs[n] for n in (names or list(self.procs)) if n in self.procs]
        self.remember_descendants()
        for proc in chosen:
            if proc.poll() is None:
                signal_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in chosen:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        self.kill(chosen)

    def kill(self, chosen: list[subprocess.Popen] | None = None) -> None:
        chosen = list(self.procs.values()) if chosen is None else chosen
        for proc in chosen:
            signal_group(proc.pid, signal.SIGKILL)
        for proc in chosen:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)

    def leftovers(self) -> list[psutil.Process]:
        """Processes of the stack still alive: in one of its sessions, or a recorded descendant."""
        out = []
        me = os.getpid()
        for p in psutil.process_iter(["pid"]):
            if p.pid == me:
                continue
            mine = getsid(p.pid) in self.sids
            if not mine and p.pid in self.seen:
                with contextlib.suppress(psutil.Error):
                    mine = abs(p.create_time() - self.seen[p.pid]) < 0.05
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
            kill_pids([p.pid for p in left])
            psutil.wait_procs(left, timeout=5)

    def kill_now(self) -> None:
        """No grace: SIGKILL every group and every leftover (a second Ctrl-C)."""
        self.remember_descendants()
        for proc in self.procs.values():
            signal_group(proc.pid, signal.SIGKILL)
        kill_pids([p.pid for p in self.leftovers()])

    def tree(self, classify) -> list[ProcInfo]:
        """Every live process of the groups with its role (`classify(component, proc, title, parent_role)`)."""
        out: list[ProcInfo] = []
        for name, popen in self.procs.items():
            if popen.poll() is not None:
                continue
            try:
                root = psutil.Process(popen.pid)
            except psutil.Error:
                continue
            roles = {root.pid: name}
            out.append(ProcInfo(root.pid, name, name, title(root), os.getppid()))
            for child in descendants(root.pid):
                try:
                    ppid = child.ppid()
                    self.seen[child.pid] = child.create_time()
                except psutil.Error:
                    continue
                child_title = title(child)
                if not child_title:
                    continue
                role = classify(name, child, child_title, roles.get(ppid, ""))
                roles[child.pid] = role
                out.append(ProcInfo(child.pid, role, name, child_title, ppid))
        return out


def peak_rss(pid: int) -> int | None:
    """The kernel's high-water mark of a process's RSS (VmHWM), in bytes: a sampled max misses short spikes."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None
