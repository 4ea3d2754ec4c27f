"""celery: PSS/USS of each celery worker's prefork pool processes, aged by forced full collections, per build.

For each build a real CeleryExecutor stack (memseries.celery_stack: api-server, dag-processor, scheduler,
Redis broker, PostgreSQL metadata DB + result backend, --workers `airflow celery worker` x --concurrency) runs
examples/dags/busy_python.py (an endless backlog of short PythonOperator tasks) for --duration seconds. The
harness's sitecustomize ages every forked child: each pool process (and each task process) runs a full
gc.collect() every --age seconds. psutil samples every pool process and worker main process each --interval
seconds; a pool process's USS is only compared over samples where it had no live child (while it has forked
a task process the pages they share are not unique to it).

"at fork" = the USS a pool process measured itself right after its fork (the harness's aging hook);
"young" = its first sample without a task child before its first forced collection; "aged" = the largest such
sample after its second; growth = aged - young. The pool processes are forked by the worker's main process after the celery
provider's `gc.freeze()` (provider >= 3.17.2, `on_celery_import_modules`), so a full collection in them does
not touch (copy) the worker's startup heap. Unless --no-control, one extra run of the first patched build undoes
that freeze inside each pool process right after the fork (harness-only `worker_process_init` hook): that is
what the pool would cost without it, and shows the aging reaches the pool processes at all.

Output: a per-pool-process table and a per-run summary (printed and in results.md), celery.png, raw.json in
bench-results/celery-<timestamp>/. No target is set (issue 8): the core patches do not touch the celery worker;
this shows what the pool costs on each build.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from memseries.bench import common
from memseries.celery_stack import DEFAULT_BROKER, WORKER_PREFIX, CeleryOptions, CeleryStack
from memseries.stack import EXAMPLE_DAGS, StackConfig

MB = 1e6


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common.add_build_arguments(parser)
    parser.add_argument(
        "--duration", type=float, default=120.0, help="seconds of load per run, after workers are ready (120)"
    )
    parser.add_argument(
        "--age", type=float, default=20.0, help="forced full gc.collect() every N s in forked children (20)"
    )
    parser.add_argument("--interval", type=float, default=2.0, help="memory sampling interval in s (2)")
    parser.add_argument("--workers", type=int, default=2, help="celery workers (2)")
    parser.add_argument("--concurrency", type=int, default=2, help="pool processes per worker (2)")
    parser.add_argument(
        "--parallelism",
        type=int,
        default=2,
        help="[core] parallelism (2): fewer tasks in flight than pool processes, so each pool process is idle "
        "(no task child) often enough to be sampled alone",
    )
    parser.add_argument("--broker", default=DEFAULT_BROKER, help=f"celery broker URL ({DEFAULT_BROKER})")
    parser.add_argument("--dag", type=Path, default=EXAMPLE_DAGS / "busy_python.py", help="DAG file to run")
    parser.add_argument(
        "--from-raw", type=Path, help="only re-render the tables and plot from an earlier run's raw.json"
    )
    parser.add_argument(
        "--no-control",
        action="store_true",
        help="skip the run with the provider's pre-fork gc.freeze() undone",
    )



def _runs(args) -> list[tuple[str, common.Build, bool]]:
    builds = common.builds(args)
    runs = [(b.label, b, False) for b in builds]
    if not args.no_control and builds:
        b = next((b for b in builds if b.patched), builds[0])
        runs.append((f"{b.label} no-freeze (control)", b, True))
    return runs


def _measure(name: str, build: common.Build, unfreeze: bool, args, prog, task) -> dict:
    cfg = StackConfig(
        venv=build.venv,
        label=name.split()[0] + ("-control" if unfreeze else ""),
        backend="postgres",
        parallelism=args.parallelism,
        dags=[args.dag],
        age_interval=args.age,
    )
    options = CeleryOptions(
        workers=args.workers,
        concurrency=args.concurrency,
        broker_url=args.broker,
        unfreeze_pool=unfreeze,
        sample_interval=args.interval,
        sample_roles=["pool", *(f"{WORKER_PREFIX}{i}" for i in range(1, args.workers + 1))],
    )
    with CeleryStack(cfg, options) as st:
        sampler = st.sampler
        assert sampler is not None
        t_end = time.monotonic() + args.duration
        while (left := t_end - time.monotonic()) > 0:
            st.check_alive()
            time.sleep(min(5.0, left))
            prog.update(task, completed=args.duration - max(0.0, t_end - time.monotonic()))
        sampler.stop()
        samples = sampler.snapshot()
        collections = st.collection_log()
        fork_uss = st.fork_uss()
        counts = st.task_counts()
        hosts = dict(st.worker_hostnames)
        pool_workers = {str(p.pid): p.component for p in st.processes() if p.role == "pool"}
    return {
        "name": name,
        "build": build.label,
        "unfreeze_pool": unfreeze,
        "tasks": counts,
        "workers": hosts,
        "samples": [s.__dict__ for s in samples],
        "collections": {str(pid): v for pid, v in collections.items()},
        "fork_uss": {str(pid): v for pid, v in fork_uss.items()},
        "pool_workers": pool_workers,
    }


def _pool(res: dict) -> dict[int, dict]:
    """pool pid -> young/aged sample, collections, series; from a run's raw samples."""
    by_pid: dict[int, list[dict]] = {}
    for s in res["samples"]:
        by_pid.setdefault(s["pid"], []).append(s)
    out = {}
    for pid, ss in by_pid.items():
        if ss[0]["role"] != "pool":
            continue
        colls = res["collections"].get(str(pid), [])
        quiet = [s for s in ss if s["children"] == 0]
        walls = [w for w, _ in colls]
        young = [s for s in quiet if not walls or s["wall"] < walls[0]]
        aged = [s for s in quiet if len(walls) >= 2 and s["wall"] > walls[1]]
        worker = res.get("pool_workers", {}).get(str(pid)) or next(
            (c for c, h in res["workers"].items() if h in ss[0]["title"]), "?"
        )
        worker = worker.replace(WORKER_PREFIX, "w")
        out[pid] = {
            "worker": worker,
            "fork_uss": res.get("fork_uss", {}).get(str(pid)),
            "young": young[0] if young else None,
            "aged": max(aged, key=lambda s: s["uss"]) if aged else None,
            "collections_ms": [d * 1000 for _, d in colls],
            "series": [(s["t"], s["uss"], s["pss"], s["children"]) for s in ss],
        }
    return out


def _mains(res: dict) -> list[dict]:
    last: dict[int, dict] = {}
    for s in res["samples"]:
        if s["role"] != "pool":
            last[s["pid"]] = s
    return list(last.values())


def _fmt(v: float | None) -> str:
    return common.mb(v) if v is not None else "-"


def run(args) -> int:
    out_dir = common.results_dir("celery")
    if args.from_raw:
        # re-render the tables and plot of an earlier run (its raw.json, and its run parameters)
        saved = json.loads(Path(args.from_raw).read_text())
        raw, meta = saved["runs"], saved["args"]
        for key in ("duration", "age", "workers", "concurrency"):
            setattr(args, key, meta[key])
        names = list(raw)
    else:
        runs = _runs(args)
        raw = {}
        with common.progress() as prog:
            for name, build, unfreeze in runs:
                task = prog.add_task(f"{name}: stack up + {args.duration:.0f} s of load", total=args.duration)
                raw[name] = _measure(name, build, unfreeze, args, prog, task)
                prog.update(task, completed=args.duration)
        names = [n for n, _, _ in runs]
    meta = {k: getattr(args, k) for k in ("duration", "age", "workers", "concurrency", "parallelism")}
    (out_dir / "raw.json").write_text(json.dumps({"args": meta, "runs": raw}, indent=1, default=str))
    md = out_dir / "results.md"

    headers = [
        "run",
        "worker",
        "pool pid",
        "USS at fork MB",
        "PSS young MB",
        "PSS aged MB",
        "USS young MB",
        "USS aged MB",
        "USS growth MB",
        "forced collections (median ms)",
    ]
    rows = []
    summaries = {}
    for name in names:
        pool = _pool(raw[name])
        growth, uss_y, uss_a, pss_a, colls = [], [], [], [], []
        at_fork = [p["fork_uss"] for p in pool.values() if p["fork_uss"] is not None]
        for pid, p in sorted(pool.items(), key=lambda kv: (kv[1]["worker"], kv[0])):
            y, a = p["young"], p["aged"]
            g = a["uss"] - y["uss"] if (a and y) else None
            if g is not None:
                growth.append(g)
                uss_y.append(y["uss"])
            if a:
                uss_a.append(a["uss"])
                pss_a.append(a["pss"])
            colls += p["collections_ms"]
            c = p["collections_ms"]
            rows.append(
                [
                    name,
                    p["worker"],
                    pid,
                    _fmt(p["fork_uss"]),
                    _fmt(y and y["pss"]),
                    _fmt(a and a["pss"]),
                    _fmt(y and y["uss"]),
                    _fmt(a and a["uss"]),
                    _fmt(g),
                    f"{len(c)} ({statistics.median(c):.0f})" if c else "0",
                ]
            )
        mains = _mains(raw[name])
        summaries[name] = {
            "pool": len(pool),
            "measured": len(growth),
            "uss_fork": statistics.mean(at_fork) if at_fork else None,
            "uss_young": statistics.mean(uss_y) if uss_y else None,
            "uss_aged": statistics.mean(uss_a) if uss_a else None,
            "uss_growth": statistics.mean(growth) if growth else None,
            "pss_aged_total": sum(pss_a) if pss_a else None,
            "main_pss": sum(m["pss"] for m in mains),
            "collect_ms": statistics.median(colls) if colls else None,
            "tasks_ok": raw[name]["tasks"].get("success", 0),
            "tasks_failed": raw[name]["tasks"].get("failed", 0),
        }
    title = (
        f"celery: per pool process, aged (workers {args.workers} x concurrency {args.concurrency}, "
        f"{args.duration:.0f} s of load, full gc.collect() every {args.age:g} s in forked children)"
    )
    common.print_table(title, headers, rows)
    common.write_markdown_table(md, title, headers, rows)

    base = summaries.get("3.1.3")
    headers = [
        "run",
        "pool processes (measured)",
        "tasks ok",
        "USS at fork MB",
        "USS young -> aged MB (mean)",
        "aged USS vs 3.1.3",
        "USS growth MB",
        "aged pool PSS MB (sum)",
        "vs 3.1.3",
        "worker main PSS MB (sum)",
        "pool full collection ms (median)",
    ]
    rows = []
    for name in names:
        s = summaries[name]
        ok = f"{s['tasks_ok']}" + (f" ({s['tasks_failed']} failed)" if s["tasks_failed"] else "")
        rows.append(
            [
                name,
                f"{s['pool']} ({s['measured']})",
                ok,
                _fmt(s["uss_fork"]),
                f"{_fmt(s['uss_young'])} -> {_fmt(s['uss_aged'])}",
                common.ratio(s["uss_aged"], base["uss_aged"])
                if base and s["uss_aged"] and base["uss_aged"]
                else "-",
                _fmt(s["uss_growth"]),
                _fmt(s["pss_aged_total"]),
                common.ratio(s["pss_aged_total"], base["pss_aged_total"])
                if base and s["pss_aged_total"] and base["pss_aged_total"]
                else "-",
                _fmt(s["main_pss"]),
                f"{s['collect_ms']:.0f}" if s["collect_ms"] is not None else "-",
            ]
        )
    title = (
        "celery: per-run summary (pool processes: USS mean per process, PSS summed; aged = after 2 collections;"
        " measured = with a young and an aged sample)"
    )
    common.print_table(title, headers, rows)
    common.write_markdown_table(md, title, headers, rows)

    png = out_dir / "celery.png"
    _plot(png, names, raw, args)
    common.console.print(f"results: {md}, {png}, {out_dir / 'raw.json'}")
    return 0


def _plot(path: Path, names: list[str], raw: dict, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    palette = iter(["tab:red", "tab:green", "tab:blue", "tab:orange", "tab:purple"])
    colors = {n: ("tab:gray" if "control" in n else next(palette)) for n in names}
    fig, (ax_uss, ax_pss) = plt.subplots(1, 2, figsize=(13, 4.8))
    for name in names:
        for i, p in enumerate(_pool(raw[name]).values()):
            quiet = [(t, u, s) for t, u, s, kids in p["series"] if kids == 0]
            ts = [t for t, _, _ in quiet]
            ax_uss.plot(
                ts,
                [u / MB for _, u, _ in quiet],
                color=colors[name],
                lw=1,
                alpha=0.8,
                label=name if i == 0 else None,
            )
            ax_pss.plot(
                ts,
                [s / MB for _, _, s in quiet],
                color=colors[name],
                lw=1,
                alpha=0.8,
                label=name if i == 0 else None,
            )
    for ax in (ax_uss, ax_pss):
        ax.set_xlabel("seconds since the stack was up (samples with no live task child)")
        ax.legend(fontsize=8)
    ax_uss.set_ylabel("MB")
    ax_uss.set_title("USS of each celery pool process")
    ax_pss.set_title("PSS of each celery pool process")
    fig.suptitle(
        f"CeleryExecutor, {args.workers} workers x concurrency {args.concurrency}, "
        f"forced full collection every {args.age:g} s"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
