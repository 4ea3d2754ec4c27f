"""faults: the fault suite of issue 17 on each build in one invocation: lost / doubled / retried TIs, recovery, stop.

For each build (unpatched 3.3.2 and the patched build by default; `--venv LABEL=PATH` adds any Airflow venv, e.g. a
preview build of a helper's branch) it runs the real stack on PostgreSQL (api-server, dag-processor,
scheduler(s), LocalExecutor parallelism 2) three times, one build after the other:

1. quick stack: 1 busy worker SIGKILL, 3 scheduler SIGKILL + restart, 4 PostgreSQL down 6 s (what exits on it is
   restarted, as systemd/Kubernetes would, and named in the verdict), 5a parse process SIGKILL, then 2 idle
   workers SIGKILLed in turn (last: it wedges the pool of a build without the fix), 5b dag-processor SIGTERM
   during a slow approved preload (builds with [dag_processor] preload_modules); then the stack is stopped and timed;
2. scenario 6: two schedulers for --versions-duration while a scheduled DAG file changes version every 20 s;
3. the mixed run: two schedulers and the versioned DAG for --duration, one of 1/3/4/5a every --fault-every.

Every scenario is judged from the metadata DB and the files each task try writes (memseries.faultsuite): TIs
ok / retried / lost / doubled, tries queued longer than task_queued_timeout, deadlock errors in the logs,
recovery seconds (fault -> the scenario's runs finished), stop seconds. A failed expectation is a row of the
table, not an error. Output: the table (printed and in table.md), faults.png, raw.json in
bench-results/faults-<timestamp>/. Every run takes PostgreSQL on 127.0.0.1:5432 and stops it for 6 s (scenario 4):
run it under `flock /work/coord/heavy.lock` on a shared machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

from memseries import faultsuite as fs
from memseries.bench import common
from memseries.errors import SeriesError
from memseries.stack import StackError, postgres_unreachable
from memseries.stackrun.cli import parse_duration


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common.add_build_arguments(parser)
    parser.set_defaults(builds="base,patched")
    parser.add_argument("--venv", action="append", default=[], metavar="LABEL=PATH",
                        help="also run the venv at PATH under LABEL (repeatable)")
    parser.add_argument("--duration", type=parse_duration, default=parse_duration("5m"),
                        help="the mixed run per build (e.g. 30m; default 5m for trying)")
    parser.add_argument("--versions-duration", type=parse_duration, default=parse_duration("10m"),
                        help="scenario 6 (two schedulers, DAG versions changing) per build (default 10m)")
    parser.add_argument("--fault-every", type=parse_duration, default=parse_duration("90s"),
                        help="a fault every N in the mixed run (default 90s)")
    parser.add_argument("--parts", default="quick,versions,mixed",
                        help="comma-separated subset of quick (1-5), versions (6), mixed")


def _builds(args) -> list[tuple[str, Path, str | None]]:
    """(label, venv, why unavailable) per build."""
    out = []
    for w in args.builds.split(","):
        try:
            b = common.builds(argparse.Namespace(**{**vars(args), "builds": w}))
        except SeriesError as e:
            out.append((f"{args.base}+memfix" if w == "patched" else w, Path(), str(e)))
            continue
        out += [(x.label, x.venv, None) for x in b]
    for spec in args.venv:
        label, _, path = spec.partition("=")
        if not path:
            raise SeriesError(f"--venv {spec!r}: expected LABEL=PATH")
        venv = Path(path).absolute()
        out.append((label, venv, None if (venv / "bin" / "airflow").exists() else f"no bin/airflow in {venv}"))
    return out


def _run_build(label: str, venv: Path, args, cluster, log) -> list[fs.Outcome]:
    features = fs.BuildFeatures.probe(venv)
    log(f"[{label}] {venv} {features}")
    parts = args.parts.split(",")
    outcomes: list[fs.Outcome] = []

    def guarded(name: str, fn) -> fs.Outcome:
        try:
            return fn()
        except StackError as e:  # a component died or a wait on the fault's precondition timed out
            return fs.Outcome(name, label, notes=[f"FAIL: {str(e).splitlines()[0]}"], lost=1)
        finally:
            fs.ensure_pg_running(cluster)

    if "quick" in parts:
        with tempfile.TemporaryDirectory(prefix="memseries-faults-") as track:
            st = fs.open_stack(venv, f"faults-{label}", Path(track), log=log)
            try:
                for name, fn in [
                    ("1 busy worker SIGKILL", lambda: fs.busy_worker_kill(st, label)),
                    ("3 scheduler SIGKILL + restart", lambda: fs.scheduler_kill_restart(st, label)),
                    (f"4 PostgreSQL restart ({fs.PG_DOWN:g}s down)", lambda: fs.postgres_restart(st, label, cluster)),
                    ("5a parse process SIGKILL", lambda: fs.parse_process_kill(st, label)),
                    ("2 idle worker SIGKILL", lambda: fs.idle_worker_kill(st, label)),
                    ("5b dag-processor SIGTERM in preload", lambda: fs.dagproc_sigterm_preload(st, label, features)),
                ]:
                    outcomes.append(guarded(name, fn))
                    log(f"[{label}] {outcomes[-1].row()}")
            finally:
                stop_s, left = fs.timed_stop(st)
            stop = fs.Outcome("stop of the quick stack", label, stop_s=stop_s)
            if st.stop_killed:  # type: ignore[attr-defined]
                stop.notes.append(f"needed SIGKILL after the grace: {st.stop_killed}")  # type: ignore[attr-defined]
            if left:
                stop.notes.append(f"FAIL: left behind: {[p.pid for p in left]}")
            outcomes.append(stop)
    for part, name, kw in [
        ("versions", "6 two schedulers, DAG versions", {"duration": args.versions_duration}),
        ("mixed", "mixed run (1,3,4,5a + versions)", {"duration": args.duration, "fault_every": args.fault_every}),
    ]:
        if part not in parts:
            continue
        with tempfile.TemporaryDirectory(prefix="memseries-faults-") as track:
            st = fs.open_stack(venv, f"faults-{part}-{label}", Path(track), log=log, schedulers=2)
            try:
                o = guarded(name, lambda: fs.two_schedulers(st, label, features=features, **kw))  # noqa: B023
            finally:
                o_stop, left = fs.timed_stop(st)
            o.stop_s = o_stop
            if st.stop_killed:  # type: ignore[attr-defined]
                o.notes.append(f"needed SIGKILL after the grace: {st.stop_killed}")  # type: ignore[attr-defined]
            if left:
                o.notes.append(f"FAIL: left behind: {[p.pid for p in left]}")
            outcomes.append(o)
            log(f"[{label}] {o.row()}")
    return outcomes


def run(args) -> int:
    if reason := postgres_unreachable():
        raise SeriesError(reason)
    cluster = fs.pg_cluster()
    out_dir = common.results_dir("faults")
    logf = (out_dir / "run.log").open("a")

    def log(msg: str) -> None:
        common.console.print(msg, markup=False)
        logf.write(f"{time.strftime('%H:%M:%S')} {msg}\n")
        logf.flush()

    outcomes: list[fs.Outcome] = []
    try:
        for label, venv, unavailable in _builds(args):
            if unavailable:
                outcomes.append(fs.Outcome("all", label, skipped=unavailable))
                continue
            outcomes += _run_build(label, venv, args, cluster, log)
    finally:
        fs.ensure_pg_running(cluster)
        logf.close()
    order = sorted(range(len(outcomes)), key=lambda i: (outcomes[i].scenario, i))
    rows = [outcomes[i].row() for i in order]
    title = (f"fault suite, PostgreSQL, LocalExecutor parallelism {fs.PARALLELISM}, heartbeat timeout "
             f"{fs.HEARTBEAT_TIMEOUT:g}s, task_queued_timeout {fs.QUEUED_TIMEOUT:g}s")
    common.print_table(title, fs.HEADERS, rows)
    md = out_dir / "table.md"
    common.write_markdown_table(md, title, fs.HEADERS, rows)
    (out_dir / "raw.json").write_text(json.dumps([dataclasses.asdict(o) for o in outcomes], indent=1))
    png = out_dir / "faults.png"
    _plot(png, outcomes)
    common.console.print(f"results: {md}, {png}, {out_dir / 'raw.json'}")
    return 0


def _plot(path: Path, outcomes: list[fs.Outcome]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ran = [o for o in outcomes if not o.skipped]
    scenarios = sorted({o.scenario for o in ran})
    builds = list(dict.fromkeys(o.build for o in ran))
    if not scenarios:
        return
    fig, (ax_rec, ax_stop) = plt.subplots(1, 2, figsize=(14, 0.5 * len(scenarios) + 2.5), sharey=True)
    h = 0.8 / max(1, len(builds))
    for j, b in enumerate(builds):
        by = {o.scenario: o for o in ran if o.build == b}
        ys = [i + j * h for i in range(len(scenarios))]
        rec = [(by[s].recovery_s or 0) if s in by else 0 for s in scenarios]
        stop = [(by[s].stop_s or 0) if s in by else 0 for s in scenarios]
        bars = ax_rec.barh(ys, rec, height=h, label=b)
        for y, s in zip(ys, scenarios):
            if s in by and by[s].problems():
                ax_rec.text(0, y, "  FAILED: " + by[s].problems()[0][:60], va="center", fontsize=7, color="red")
        ax_stop.barh(ys, stop, height=h, label=b, color=bars.patches[0].get_facecolor() if bars.patches else None)
    ax_rec.set_yticks([i + 0.4 - h / 2 for i in range(len(scenarios))], scenarios, fontsize=8)
    ax_rec.set_xlabel("recovery s (fault -> the scenario's runs finished)")
    ax_stop.set_xlabel("stop s (all process groups at once)")
    ax_stop.axvline(fs.STOP_WITHIN, color="grey", ls=":")
    ax_rec.legend(fontsize=8)
    fig.suptitle("memseries bench faults")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
