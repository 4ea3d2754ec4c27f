"""Turning a run's samples into rows: per-process start/end PSS and USS, worker means, totals, ratios."""

from __future__ import annotations

import dataclasses
import statistics

from memseries.stack import Sample, mib
from memseries.stackrun.run import RunResult

LONG_LIVED = ("scheduler", "dag-processor", "api-server")


@dataclasses.dataclass
class ProcRow:
    build: str
    process: str
    n: int
    pss0: float
    pss1: float
    uss0: float
    uss1: float

    @property
    def growth(self) -> float:
        return self.uss1 - self.uss0


def _settled(samples: list[Sample]) -> list[Sample]:
    """Samples of a process taken while it had no child process.

    A forked child shares its parent's pages until one of them writes: while a worker runs a task process (or
    the dag-processor a parse process), the parent's USS drops and its PSS is split, by however much they
    share. Processes that always have children (the scheduler with its workers) keep all their samples.
    """
    calm = [s for s in samples if s.children == 0]
    return calm or samples


def _start_end(ss: list[Sample], fork_uss: int | None = None) -> tuple[float, float, float, float]:
    """(PSS start, PSS end, USS start, USS end) in MiB. End = the highest of the last few settled samples (sharing
    with a child only ever understates); start USS = what the process measured itself right after its fork,
    when the harness knows it."""
    tail_ = ss[-3:]
    uss0 = mib(fork_uss) if fork_uss else mib(ss[0].uss)
    return mib(ss[0].pss), mib(max(s.pss for s in tail_)), uss0, mib(max(s.uss for s in tail_))


def process_rows(res: RunResult, per_worker: bool = True) -> list[ProcRow]:
    by_pid: dict[int, list[Sample]] = {}
    for s in res.samples:
        by_pid.setdefault(s.pid, []).append(s)
    rows: list[ProcRow] = []
    warm = res.warmup or 0.0
    for role in LONG_LIVED:
        for ss in by_pid.values():
            if ss[0].role != role:
                continue
            ss = _settled([s for s in ss if s.t >= warm] or ss)
            rows.append(ProcRow(res.build.label, role, 1, *_start_end(ss)))
    workers = [(pid, _settled(ss)) for pid, ss in by_pid.items() if ss[0].role == "worker"]
    workers.sort(key=lambda item: item[1][0].t)
    long_workers = [(pid, ss) for pid, ss in workers if len(ss) >= 2]
    worker_rows = [
        ProcRow(res.build.label, f"worker {i}", 1, *_start_end(ss, res.fork_uss.get(pid)))
        for i, (pid, ss) in enumerate(long_workers, 1)
    ]
    if per_worker:
        rows += worker_rows
    if worker_rows:
        rows.append(_mean_row(res.build.label, "workers (mean)", worker_rows))
    parse = [
        ProcRow(res.build.label, "parse", 1, *_start_end(ss, res.fork_uss.get(pid)))
        for pid, ss in by_pid.items()
        if ss[0].role == "parse"
    ]
    if parse:
        rows.append(_mean_row(res.build.label, "parse children (mean)", parse))
    return rows


def _mean_row(label: str, name: str, rows: list[ProcRow]) -> ProcRow:
    def m(values):
        return statistics.fmean(values) if values else 0.0

    return ProcRow(
        label,
        name,
        len(rows),
        m([r.pss0 for r in rows]),
        m([r.pss1 for r in rows]),
        m([r.uss0 for r in rows]),
        m([r.uss1 for r in rows]),
    )


def total_pss_series(res: RunResult, roles=None) -> tuple[list[float], list[float]]:
    """Sum of PSS (MiB) over the processes (of the given roles) at each sampling tick."""
    ticks: dict[float, float] = {}
    for s in res.samples:
        if roles and s.role not in roles:
            continue
        ticks[s.t] = ticks.get(s.t, 0.0) + mib(s.pss)
    ts = sorted(ticks)
    return ts, [ticks[t] for t in ts]


def worker_uss_series(res: RunResult) -> tuple[list[float], list[float]]:
    """Largest USS (MiB) among the LocalExecutor workers without a task child at each tick (sharing with a
    child only ever lowers a worker's USS, so the largest idle one is the steadiest view)."""
    ticks: dict[float, list[float]] = {}
    for s in res.samples:
        if s.role == "worker" and s.children == 0:
            ticks.setdefault(s.t, []).append(mib(s.uss))
    ts = sorted(ticks)
    return ts, [max(ticks[t]) for t in ts]


def summary_row(res: RunResult) -> list[str]:
    _, total = total_pss_series(res)
    _, wtot = total_pss_series(res, roles={"worker"})
    gc_w = res.gc_times.get("worker", [])
    rate = res.counts.get("success", 0) / max(1.0, (res.duration - res.warmup) / 60.0)
    return [
        res.build.label,
        str(res.counts.get("success", 0)),
        str(res.counts.get("failed", 0) + res.counts.get("upstream_failed", 0)),
        f"{rate:.0f}",
        f"{total[-1]:.0f}" if total else "-",
        f"{max(wtot):.0f}" if wtot else "-",
        f"{1000 * statistics.median(gc_w):.0f}" if gc_w else "-",
        f"{mib(res.scheduler_peak_rss):.0f}" if res.scheduler_peak_rss else "-",
        res.conf_run,
        res.error.splitlines()[0][:60] if res.error else "ok",
    ]


NOTES = """Notes: MiB. Workers' "USS start" is what each worker measured itself right after its fork (harness
sitecustomize); other starts are the first sample after the first task run succeeded; "end" is the highest of the
last three samples. A process's USS/PSS is taken from samples where it had no child process (a forked child shares
its pages, which understates USS and splits PSS); the scheduler always has its workers, so its USS is
understated by what it still shares with them. The total PSS is the honest sum over every process of the stack.
"""

SUMMARY_HEADERS = [
    "build",
    "task runs ok",
    "failed",
    "ok/min",
    "total PSS end MiB",
    "workers PSS max MiB",
    "worker gc.collect() ms (median)",
    "scheduler peak RSS MiB",
    "1 MiB-conf mapped run",
    "status",
]
PROC_HEADERS = ["build", "process", "n", "PSS start", "PSS end", "USS start", "USS end", "USS growth"]


def proc_table(results: list[RunResult], per_worker: bool = True) -> list[list[str]]:
    rows = []
    for res in results:
        for r in process_rows(res, per_worker=per_worker):
            rows.append(
                [
                    r.build,
                    r.process,
                    str(r.n),
                    f"{r.pss0:.1f}",
                    f"{r.pss1:.1f}",
                    f"{r.uss0:.1f}",
                    f"{r.uss1:.1f}",
                    f"{r.growth:+.1f}",
                ]
            )
    return rows


def ratio_lines(results: list[RunResult]) -> list[str]:
    """Worker USS growth and end PSS, unpatched vs others."""
    base = next((r for r in results if not r.build.patched), None)
    if base is None:
        return []

    def worker_mean(res):
        return next((r for r in process_rows(res) if r.process == "workers (mean)"), None)

    b = worker_mean(base)
    out = []
    for res in results:
        if res is base:
            continue
        w = worker_mean(res)
        if b and w:
            out.append(
                f"{res.build.label} vs {base.build.label}: mean worker USS growth {w.growth:+.1f} vs {b.growth:+.1f} MiB, "
                f"end PSS {w.pss1:.1f} vs {b.pss1:.1f} MiB (x{(w.pss1 / b.pss1) if b.pss1 else 0:.2f})"
            )
    return out
