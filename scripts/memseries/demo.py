"""`memseries demo`: the real Airflow stack on an unpatched vs patched base (3.3.2 by default; --base 3.1.3).

For each build: start api-server + dag-processor + scheduler (LocalExecutor) on SQLite (or PostgreSQL) over the
bundled example DAGs (examples/dags: many short Bash/Python tasks, one DAG importing numpy), age every forked
child with a forced full collection every --age seconds (harness only), sample PSS/USS of every process with
psutil, and count task runs in the metadata DB. Then print the per-process table, and write a markdown table, the
raw samples (CSV) and a PNG (per-process PSS/USS bars like the smem charts in apache/airflow#58365, plus memory
over time) into bench-results/demo-<timestamp>/.

The builds run one after the other (never side by side: they would share 2 cores and distort each other).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import os
import re
import statistics
import sys
import time
from pathlib import Path

from memseries.bases import DEFAULT_BASE
from memseries.stack import EXAMPLE_DAGS, REPO, Sample, Stack, StackConfig, StackError, mib, tail

HELP = (
    "run the real Airflow stack on an unpatched and a patched base (default 3.3.2; aged workers), print the memory "
    "table + PNG"
)

LONG_LIVED = ("scheduler", "dag-processor", "api-server")


# --------------------------------------------------------------------------------------------------------------
# builds


@dataclasses.dataclass
class DemoBuild:
    label: str
    venv: Path
    patched: bool


def parse_duration(text: str) -> float:
    """'90', '90s', '3m', '1h30m' -> seconds."""
    text = str(text).strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    total, pos = 0.0, 0
    for m in re.finditer(r"(\d+(?:\.\d+)?)\s*([hms])", text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * {"h": 3600, "m": 60, "s": 1}[m.group(2)]
        pos = m.end()
    if pos != len(text) or total <= 0:
        raise argparse.ArgumentTypeError(f"bad duration {text!r} (examples: 180, 90s, 3m, 1h)")
    return total


def _ensure(base: str, patched: bool, log) -> Path:
    """The lead's memseries.venv.ensure_venv when available, else the conventional venv paths."""
    try:
        from memseries.venv import ensure_venv  # type: ignore[import-not-found]
    except ImportError:
        ensure_venv = None
    if ensure_venv is not None:
        return Path(ensure_venv(base, patched=patched))
    path = REPO / ".venv" / (f"airflow-{base}-patched" if patched else f"airflow-{base}")
    log(f"memseries.venv.ensure_venv not available: using {path} as is")
    if not (path / "bin" / "airflow").exists():
        raise StackError(f"{path} does not exist (build it with `memseries venv --base {base}`)")
    return path


def resolve_builds(args, log) -> list[DemoBuild]:
    """Unpatched base, patched base, and with --upstream the upstream reference (3.3.2) when it is not the base."""
    from memseries.bases import UPSTREAM

    base = getattr(args, "base", None) or DEFAULT_BASE
    builds = []
    if getattr(args, "unpatched_venv", None):
        builds.append(DemoBuild(base, Path(args.unpatched_venv), False))
    else:
        builds.append(DemoBuild(base, _ensure(base, False, log), False))
    if getattr(args, "patched_venv", None):
        builds.append(DemoBuild(f"{base}+memfix", Path(args.patched_venv), True))
    else:
        builds.append(DemoBuild(f"{base}+memfix", _ensure(base, True, log), True))
    if getattr(args, "upstream", False) and base != UPSTREAM:
        if getattr(args, "upstream_venv", None):
            builds.append(DemoBuild(UPSTREAM, Path(args.upstream_venv), False))
        else:
            builds.append(DemoBuild(UPSTREAM, _ensure(UPSTREAM, False, log), False))
    return builds


# --------------------------------------------------------------------------------------------------------------
# one run


@dataclasses.dataclass
class RunResult:
    build: DemoBuild
    duration: float
    samples: list[Sample]
    counts: dict[str, int]
    gc_times: dict[str, list[float]]  # role -> durations of forced full collections
    error: str | None = None
    warmup: float = 0.0  # seconds after start when the first task run succeeded
    age: float = 0.0  # seconds between forced collections in forked children
    fork_uss: dict[int, int] = dataclasses.field(default_factory=dict)  # pid -> USS right after its fork
    failed_tasks: list[tuple] = dataclasses.field(default_factory=list)  # (dag_id, task_id, count)
    log_tails: dict[str, str] = dataclasses.field(default_factory=dict)  # component -> last lines of its log


def run_stack(build: DemoBuild, args, progress=None, log=print) -> RunResult:
    config = {("dag_processor", "preload_modules"): "numpy"}  # read by the patched dag-processor only
    cfg = StackConfig(
        venv=build.venv,
        label=build.label,
        backend=args.backend,
        parallelism=args.parallelism,
        dags=[EXAMPLE_DAGS],
        age_interval=args.age,
        config=config,
    )
    stack = Stack(cfg, log=lambda m: None)
    samples: list[Sample] = []
    counts: dict[str, int] = {}
    gc_times: dict[str, list[float]] = {}
    fork_uss: dict[int, int] = {}
    failed: list[tuple] = []
    log_tails: dict[str, str] = {}
    error = None
    warmup = 0.0
    task = progress.add_task(f"{build.label}: starting", total=args.duration) if progress else None
    try:
        with stack:
            sampler = stack.start_sampler(interval=args.sample_interval)
            end = time.monotonic() + args.duration
            roles_by_pid: dict[int, str] = {}
            while True:
                now = time.monotonic()
                stack.check_alive()
                with contextlib.suppress(Exception):  # a locked SQLite read is retried next tick
                    counts = stack.task_counts()
                if not warmup and counts.get("success"):
                    warmup = now - stack.t0
                if progress is not None:
                    progress.update(
                        task,
                        completed=min(args.duration, args.duration - (end - now)),
                        description=(
                            f"{build.label}: {counts.get('success', 0)} ok / {counts.get('failed', 0)} failed, "
                            f"{len(stack.workers())} workers"
                        ),
                    )
                if now >= end:
                    break
                time.sleep(min(5.0, max(0.2, end - now)))
            for s in sampler.snapshot():
                roles_by_pid[s.pid] = s.role
            counts = stack.task_counts()
            for pid, entries in stack.collection_log().items():
                role = roles_by_pid.get(pid, "other")
                gc_times.setdefault(role, []).extend(d for _, d in entries)
            sampler.stop()
            samples = sampler.snapshot()
            fork_uss = stack.fork_uss()
            failed = [
                tuple(r)
                for r in stack.query(
                    "SELECT dag_id, task_id, count(*) FROM task_instance WHERE state IN ('failed', 'upstream_failed') "
                    "GROUP BY dag_id, task_id"
                )
            ]
            for name, path in stack.logfiles.items():
                log_tails[name] = tail(path, 300)
    except StackError as e:
        error = str(e)
        log(f"[red]{build.label}: {e}[/red]" if progress else f"{build.label}: {e}")
        for name, path in stack.logfiles.items():
            log_tails.setdefault(name, tail(path, 300))
    finally:
        if progress is not None and task is not None:
            progress.update(task, completed=args.duration)
    return RunResult(
        build,
        args.duration,
        samples,
        counts,
        gc_times,
        error,
        warmup,
        args.age or 0.0,
        fork_uss,
        failed,
        log_tails,
    )


# --------------------------------------------------------------------------------------------------------------
# analysis


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


# --------------------------------------------------------------------------------------------------------------
# output


def _common():
    try:
        from memseries.bench import common  # type: ignore[import-not-found]

        return common
    except ImportError:
        return None


def results_dir(name: str) -> Path:
    common = _common()
    if common is not None and hasattr(common, "results_dir"):
        return Path(common.results_dir(name))
    path = REPO / "bench-results" / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def print_table(title: str, headers: list[str], rows: list[list[str]]) -> None:
    common = _common()
    if common is not None and hasattr(common, "print_table"):
        console = getattr(common, "console", None)
        if console is not None and not console.is_terminal and console.width < 160:
            console.width = 160  # piped (make, CI logs): don't squeeze the columns into 80
        common.print_table(title, headers, rows)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for i, h in enumerate(headers):
        table.add_column(h, justify="left" if i < 2 else "right")
    for r in rows:
        table.add_row(*r)
    console = Console()
    if not console.is_terminal:
        console.width = max(console.width, 160)
    console.print(table)


def markdown_table(title: str, headers: list[str], rows: list[list[str]]) -> str:
    lines = [f"### {title}", "", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_samples_csv(path: Path, results: list[RunResult]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            ["build", "t_s", "pid", "role", "pss_bytes", "uss_bytes", "rss_bytes", "children", "title"]
        )
        for res in results:
            for s in res.samples:
                w.writerow(
                    [res.build.label, f"{s.t:.1f}", s.pid, s.role, s.pss, s.uss, s.rss, s.children, s.title]
                )


def plot(results: list[RunResult], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # unpatched base red, patched green, the upstream reference (run only beside an older base) blue
    colors = {res.build.label: "#2ca02c" if res.build.patched else ("#d62728" if i == 0 else "#1f77b4")
              for i, res in enumerate(results)}
    per_build = {res.build.label: process_rows(res, per_worker=True) for res in results}
    names: list[str] = []
    for rows in per_build.values():
        for r in rows:
            if r.process not in names and r.process != "workers (mean)":
                names.append(r.process)

    def order(name: str):
        if name in LONG_LIVED:
            return (0, LONG_LIVED.index(name))
        if name.startswith("worker "):
            return (1, int(name.split()[1]))
        return (2, 0)

    names.sort(key=order)

    fig, (ax_bar, ax_line) = plt.subplots(2, 1, figsize=(12, 10), gridspec_kw={"height_ratios": [3, 2]})
    n = len(per_build)
    height = 0.8 / max(1, n)
    for i, (label, rows) in enumerate(per_build.items()):
        by_name = {r.process: r for r in rows}
        ys = [k + i * height for k in range(len(names))]
        pss = [by_name[nm].pss1 if nm in by_name else 0 for nm in names]
        uss = [by_name[nm].uss1 if nm in by_name else 0 for nm in names]
        c = colors.get(label, None)
        ax_bar.barh(ys, pss, height=height, color=c, alpha=0.35, label=f"{label} PSS")
        ax_bar.barh(ys, uss, height=height * 0.5, color=c, alpha=0.95, label=f"{label} USS")
    ax_bar.set_yticks([k + height * (n - 1) / 2 for k in range(len(names))])
    ax_bar.set_yticklabels(names)
    ax_bar.invert_yaxis()
    ax_bar.set_xlabel("MiB at the end of the run (PSS wide/light, USS narrow/dark)")
    ax_bar.set_title(title)
    ax_bar.legend(loc="lower right", fontsize=8)
    ax_bar.grid(axis="x", alpha=0.3)

    for res in results:
        c = colors.get(res.build.label, None)
        ts, mean = worker_uss_series(res)
        ax_line.plot(
            ts, mean, color=c, marker=".", label=f"{res.build.label}: largest idle LocalExecutor worker USS"
        )
        ts, tot = total_pss_series(res, roles={"scheduler"})
        ax_line.plot(ts, tot, color=c, linestyle="--", label=f"{res.build.label}: scheduler PSS")
    ax_line.set_xlabel(
        f"seconds since start (workers aged by a forced gc.collect() every {results[0].age:g}s)"
        if results and results[0].age
        else "seconds since start"
    )
    ax_line.set_ylabel("MiB")
    ax_line.legend(fontsize=8)
    ax_line.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(results: list[RunResult], name: str, title: str, per_worker: bool = True) -> Path:
    out = results_dir(name)
    procs = proc_table(results, per_worker=per_worker)
    summ = [summary_row(r) for r in results]
    print_table(f"{title}: per process (MiB)", PROC_HEADERS, procs)
    print_table(f"{title}: task runs and totals", SUMMARY_HEADERS, summ)
    ratios = ratio_lines(results)
    for line in ratios:
        print(line)
    md = markdown_table(f"{title}: per process (MiB)", PROC_HEADERS, procs) + "\n"
    md += markdown_table(f"{title}: task runs and totals", SUMMARY_HEADERS, summ)
    if ratios:
        md += "\n" + "\n".join(f"- {line}" for line in ratios) + "\n"
    md += "\n" + NOTES
    for res in results:
        if res.failed_tasks:
            md += (
                f"\nFailed task instances on {res.build.label}: "
                + ", ".join(f"{d}.{t} x{n}" for d, t, n in res.failed_tasks)
                + "\n"
            )
            print(f"{res.build.label}: failed task instances: {res.failed_tasks} (logs in {out})")
        for component, text in res.log_tails.items():
            (out / f"log-{res.build.label}-{component}.txt").write_text(text)
    (out / "table.md").write_text(md)
    write_samples_csv(out / "samples.csv", results)
    png = out / f"{name}.png"
    plot(results, png, title)
    for res in results:
        if res.error:
            (out / f"error-{res.build.label}.txt").write_text(res.error)
    print(f"wrote {out / 'table.md'}, {png}, {out / 'samples.csv'}")
    return out


# --------------------------------------------------------------------------------------------------------------
# CLI


def add_common_arguments(parser: argparse.ArgumentParser, default_duration: str) -> None:
    parser.add_argument(
        "--duration",
        type=parse_duration,
        default=parse_duration(default_duration),
        help=f"how long each stack runs after start-up (e.g. 90s, 3m, 1h; default {default_duration})",
    )
    parser.add_argument(
        "--backend",
        choices=("sqlite", "postgres"),
        default="sqlite",
        help="metadata database (postgres: a fresh database on 127.0.0.1:5432, dropped afterwards)",
    )
    parser.add_argument(
        "--parallelism", type=int, default=4, help="[core] parallelism = LocalExecutor workers"
    )
    parser.add_argument(
        "--age",
        type=float,
        default=30.0,
        help="seconds between forced gc.collect() in every forked child (0 = no aging; default 30)",
    )
    parser.add_argument("--sample-interval", type=float, default=5.0, help="seconds between memory samples")
    parser.add_argument(
        "--unpatched-venv", type=Path, help="use this venv as the unpatched base instead of building it"
    )
    parser.add_argument(
        "--patched-venv", type=Path, help="use this venv as the patched base instead of building it"
    )
    parser.add_argument("--upstream-venv", type=Path, help="use this venv as upstream 3.3.2")
    parser.add_argument(
        "--base", default=os.environ.get("BASE") or DEFAULT_BASE, help=f"Airflow release (default {DEFAULT_BASE})"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, os.environ.get("DURATION") or "3m")
    parser.add_argument("--upstream", action="store_true", help="also run upstream Airflow 3.3.2 (when the base is older)")


def run_all(args, name: str, title: str) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    console = Console()
    if args.duration <= 0 or args.parallelism < 1:
        console.print("[red]--duration and --parallelism must be positive[/red]")
        return 2
    try:
        builds = resolve_builds(args, console.print)
    except Exception as e:  # noqa: BLE001 - a build failure is a user-facing error
        console.print(f"[red]could not prepare the venvs: {e}[/red]")
        return 1
    console.print(
        f"{title}: {', '.join(f'{b.label} ({b.venv})' for b in builds)}; {args.backend}, LocalExecutor "
        f"parallelism {args.parallelism}, {args.duration:.0f}s each, forced gc.collect() every {args.age:g}s "
        "in forked children"
    )
    results = []
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    ) as progress:
        for b in builds:
            results.append(run_stack(b, args, progress=progress, log=console.print))
    report(results, name, title)
    failed = [r for r in results if r.error]
    for r in failed:
        console.print(f"[red]{r.build.label} failed:[/red] {r.error[:2000]}")
    return 1 if failed else 0


def run(args) -> int:
    return run_all(args, "demo", "memseries demo")


if __name__ == "__main__":  # pragma: no cover - `python -m memseries.demo` until the CLI wires it
    ap = argparse.ArgumentParser(prog="memseries demo", description=HELP)
    add_arguments(ap)
    sys.exit(run(ap.parse_args()))
