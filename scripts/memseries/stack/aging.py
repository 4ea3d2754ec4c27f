"""Aging forked children from outside the patches, and reading what the aging threads logged.

The harness, never the patches, puts a ``sitecustomize.py`` on the components' PYTHONPATH that registers
``os.register_at_fork(after_in_child=...)``; every forked child (LocalExecutor workers, dag-processor parse
processes, task processes) then runs ``gc.collect()`` every N seconds in a daemon thread, as a long-lived
production process eventually does. Each child logs to <dir>/<pid>: line "0 0 <wall> <uss>" right after the fork,
then "<n> <seconds> <wall>" per forced collection.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

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


def install(site_dir: Path) -> None:
    site_dir.mkdir(parents=True, exist_ok=True)
    (site_dir / "sitecustomize.py").write_text(SITECUSTOMIZE)


class AgeLog:
    """What the aging threads of a stack's children wrote into `directory`."""

    def __init__(self, directory: Path | None):
        self.dir = directory

    def _lines(self) -> dict[int, list[list[str]]]:
        out: dict[int, list[list[str]]] = {}
        if self.dir is None or not self.dir.exists():
            return out
        for f in self.dir.iterdir():
            with contextlib.suppress(OSError, ValueError):
                out[int(f.name)] = [line.split() for line in f.read_text().splitlines() if line.strip()]
        return out

    def collections(self) -> dict[int, int]:
        """pid -> number of forced full collections the aging thread has run in it so far."""
        return {pid: sum(1 for ln in lines if ln[0] != "0") for pid, lines in self._lines().items()}

    def fork_uss(self) -> dict[int, int]:
        """pid -> USS in bytes measured by the child itself right after it was forked."""
        out = {}
        for pid, lines in self._lines().items():
            for ln in lines:
                if ln[0] == "0" and len(ln) >= 4 and int(ln[3]) >= 0:
                    out[pid] = int(ln[3])
        return out

    def collection_log(self) -> dict[int, list[tuple[float, float]]]:
        """pid -> [(wall time, duration in s)] of the forced full collections the aging thread ran in it."""
        return {
            pid: [(float(ln[2]), float(ln[1])) for ln in lines if ln[0] != "0" and len(ln) >= 3]
            for pid, lines in self._lines().items()
        }
