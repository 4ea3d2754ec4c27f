"""Sampling: PSS/USS/RSS of every process of a stack every few seconds (psutil's memory_full_info)."""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Callable, Iterable

import psutil

from memseries.stack.procs import ProcInfo, live_children


def mib(n: float) -> float:
    return n / (1024 * 1024)


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
    """Samples every process `processes()` returns, every `interval` seconds, in a daemon thread."""

    def __init__(self, stack, interval: float = 5.0, roles: Iterable[str] | None = None,
                 processes: Callable[[], list[ProcInfo]] | None = None, t0: float | None = None):
        super().__init__(name="memseries-sampler", daemon=True)
        self.processes = processes or stack.processes
        self.t0 = t0 if t0 is not None else stack.t0
        self.interval = interval
        self.roles = set(roles) if roles else None
        self.samples: list[Sample] = []
        self._stop_evt = threading.Event()
        self.lock = threading.Lock()

    def sample_once(self) -> list[Sample]:
        now = time.monotonic() - self.t0
        out = []
        for info in self.processes():
            if self.roles and info.role not in self.roles:
                continue
            try:
                proc = psutil.Process(info.pid)
                before = live_children(proc)
                m = proc.memory_full_info()
                nkids = max(before, live_children(proc))  # a child that came or went meanwhile counts too
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
        if self.is_alive() and self is not threading.current_thread():
            self.join(timeout=30)

    def snapshot(self) -> list[Sample]:
        with self.lock:
            return list(self.samples)

    def by_pid(self) -> dict[int, list[Sample]]:
        out: dict[int, list[Sample]] = {}
        for s in self.snapshot():
            out.setdefault(s.pid, []).append(s)
        return out
