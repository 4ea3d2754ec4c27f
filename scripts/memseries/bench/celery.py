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
REPO_VENVS = Path(__file__).resolve().parents[3] / ".venv"


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
    g = parser.add_argument_group(
        "provider series (issue 18): patched vs unpatched celery provider on 3.3.2, late pool forks"
    )
    g.add_argument(
        "--scenarios",
        help="comma-separated: recycle (worker_max_tasks_per_child=1), autoscale (--autoscale 8,2). Runs each on "
        "the unpatched and the patched provider instead of the classic pool comparison above",
    )
    g.add_argument(
        "--unpatched-venv",
        type=Path,
        default=REPO_VENVS / "airflow-3.3.2",
        help="3.3.2 venv with the unpatched provider 3.26.0 (.venv/airflow-3.3.2)",
    )
    g.add_argument(
        "--patched-venv",
        type=Path,
        default=None,
        help="3.3.2 venv with the patched provider 3.26.0+memfix (default: .venv/airflow-3.3.2-patched if its "
        "provider is patched, else .venv/celery-patched)",
    )
    g.add_argument("--recycles", type=int, default=40, help="main-process growth measured over N recycles (40)")
    g.add_argument(
        "--probe-delay",
        type=float,
        default=0.0,
        help="s after its fork a worker's child runs one full collection, USS logged before/after (0: in the "
        "fork hook, before the child runs anything)",
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
    if getattr(args, "scenarios", None):
        return run_provider(args)
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



# -- provider series (issue 18): late pool forks, patched vs unpatched provider on 3.3.2 -------------------------

SCENARIOS = ("recycle", "autoscale")


def _provider_version(venv: Path) -> str:
    found = sorted(venv.glob("lib/python*/site-packages/apache_airflow_providers_celery-*.dist-info"))
    if not found:
        raise common.SeriesError(f"{venv}: no apache-airflow-providers-celery installed")
    return found[-1].name.split("-", 1)[1].removesuffix(".dist-info")


def _provider_builds(args) -> list[common.Build]:
    unpatched = args.unpatched_venv.absolute()
    patched = args.patched_venv
    if patched is None:
        candidates = [REPO_VENVS / "airflow-3.3.2-patched", REPO_VENVS / "celery-patched"]
        patched = next(
            (v for v in candidates if v.exists() and "+" in _provider_version(v)), candidates[-1]
        )
    patched = patched.absolute()
    out = []
    for venv, is_patched in ((unpatched, False), (patched, True)):
        if not (venv / "bin" / "airflow").exists():
            raise common.SeriesError(f"{venv}: not an Airflow venv (bin/airflow missing)")
        version = _provider_version(venv)
        if ("+" in version) != is_patched:
            raise common.SeriesError(
                f"{venv}: provider {version} is {'not ' if is_patched else ''}a patched build"
            )
        out.append(common.Build(f"provider {version}", venv / "bin" / "python", is_patched))
    return out


def _measure_provider(name: str, build: common.Build, scenario: str, args, prog, task) -> dict:
    cfg = StackConfig(
        venv=build.venv,
        label=f"{scenario}-{'patched' if build.patched else 'unpatched'}",
        backend="postgres",
        parallelism=args.parallelism,
        dags=[args.dag],
        age_interval=args.age,
    )
    workers = [f"{WORKER_PREFIX}{i}" for i in range(1, args.workers + 1)]
    options = CeleryOptions(
        workers=args.workers,
        concurrency=args.concurrency,
        broker_url=args.broker,
        max_tasks_per_child=1 if scenario == "recycle" else None,
        autoscale="8,2" if scenario == "autoscale" else None,
        probe_delay=args.probe_delay,
        sample_interval=args.interval,
        sample_roles=["pool", "task", "celery-worker-child", *workers],
    )
    with CeleryStack(cfg, options) as st:
        sampler = st.sampler
        assert sampler is not None
        ready_wall = time.time()
        done0 = st.task_counts().get("success", 0)
        t0 = time.monotonic()
        t_end = t0 + args.duration
        while (left := t_end - time.monotonic()) > 0:
            st.check_alive()
            time.sleep(min(5.0, left))
            prog.update(task, completed=args.duration - max(0.0, t_end - time.monotonic()))
        elapsed = time.monotonic() - t0
        counts = st.task_counts()
        sampler.stop()
        samples = [x.__dict__ for x in sampler.snapshot()]
        mains = {w: st.procs[w].pid for w in workers}
        return {
            "name": name,
            "scenario": scenario,
            "build": build.label,
            "patched": build.patched,
            "ready_wall": ready_wall,
            "elapsed": elapsed,
            "tasks_done": counts.get("success", 0) - done0,
            "tasks": counts,
            "mains": mains,
            "samples": samples,
            "forks": {str(k): v for k, v in st.forks().items()},
            "probes": {str(k): v for k, v in st.probes().items()},
            "main_collections": {str(k): v for k, v in st.main_collections().items()},
            "aging": {str(k): v for k, v in st.collection_log().items()},
            "pool_tasks": {str(k): v for k, v in st.tasks_done().items()},
        }


def _provider_summary(res: dict, args) -> dict:
    mains = set(res["mains"].values())
    forks = {int(k): v for k, v in res["forks"].items()}
    probes = {int(k): v for k, v in res["probes"].items()}
    ready = res["ready_wall"]
    # initial pool processes: forked before the workers were ready; replacements: after
    pool = {pid: p for pid, p in probes.items() if p["kind"] == "pool"}
    initial = {pid for pid in pool if forks.get(pid, (0, 0))[0] < ready}
    late = {pid for pid in pool if pid not in initial}
    helpers = {pid: p for pid, p in probes.items() if p["kind"] == "helper"}

    by_pid: dict[int, list[dict]] = {}
    for x in res["samples"]:
        by_pid.setdefault(x["pid"], []).append(x)

    def idle_aged(pid: int, ran: bool | None = None) -> float | None:
        # largest USS sample with no task child, after the probe's full collection; ran=True/False: only the
        # samples taken after / before the process's first task (see ran_task)
        after = probes[pid]["wall"]
        quiet = [
            x["uss"]
            for x in by_pid.get(pid, [])
            if x["children"] == 0 and x["wall"] > after and (ran is None or ran_task(pid, x) == ran)
        ]
        return max(quiet) if quiet else None

    pool_tasks = {int(k): v for k, v in res.get("pool_tasks", {}).items()}

    def ran_task(pid: int, sample: dict) -> bool:
        # had this pool process finished (or started) a task by this sample? The harness logs each task's end
        # (task_postrun); Airflow >= 3.3 also retitles a pool process "airflow supervisor: ..." for its first
        # task and never back (the only source in raw data of older runs)
        if pid in pool_tasks and pool_tasks[pid][0][0] <= sample["wall"]:
            return True
        return sample["title"].startswith(("airflow supervisor:", "airflow task supervisor:"))

    def tasks_of(pid: int) -> int:
        return len(pool_tasks.get(pid, []))

    def med(values):
        values = [v for v in values if v is not None]
        return statistics.median(values) if values else None

    # worker tree PSS: every sampling round, the sum over both workers' trees; median over the second half
    rounds: dict[float, float] = {}
    for x in res["samples"]:
        rounds[x["t"]] = rounds.get(x["t"], 0) + x["pss"]
    ts = sorted(rounds)
    second_half = [rounds[t] for t in ts[len(ts) // 2 :]]
    # main process: RSS near the 5th late fork vs near the (5 + recycles)th, per worker. RSS, not USS: a main
    # process's USS moves with how many pool processes happen to share its pages at that instant
    growth = []
    for w, main in res["mains"].items():
        mine = sorted(forks[pid][0] for pid in late if probes[pid]["main"] == main)
        main_samples = sorted(by_pid.get(main, []), key=lambda x: x["wall"])
        if len(mine) > 5 + args.recycles and main_samples:

            def at(wall):
                return min(main_samples, key=lambda x: abs(x["wall"] - wall))["rss"]

            growth.append((at(mine[5 + args.recycles]) - at(mine[5]), len(mine)))
    colls = [
        d for pid, cs in res["main_collections"].items() if int(pid) in mains for w, d, fc in cs if w > ready
    ]
    frozen = {
        pid: [fc for w, d, fc in cs if w > ready] for pid, cs in res["main_collections"].items() if int(pid) in mains
    }
    return {
        "pool_forks": len(pool),
        "late_forks": len(late),
        "initial_uss_aged": med(idle_aged(p) for p in initial),
        "late_uss_aged": med(idle_aged(p) for p in late),
        "late_idle_measured": sum(1 for p in late if idle_aged(p) is not None),
        # the same, split: samples before a late pool process's first task / after it (a long-lived process's
        # "after" covers all its tasks so far); n = late processes with such a sample
        "late_uss_aged_notask": med(idle_aged(p, False) for p in late),
        "late_notask_measured": sum(1 for p in late if idle_aged(p, False) is not None),
        "late_uss_aged_task": med(idle_aged(p, True) for p in late),
        "late_task_measured": sum(1 for p in late if idle_aged(p, True) is not None),
        "late_tasks_each": med(tasks_of(p) for p in late) if pool_tasks else None,
        "late_tasks_max": max((tasks_of(p) for p in late), default=0) if pool_tasks else None,
        # each late pool process's own USS at the end of its first task and of its last (task_postrun, before a
        # forced collection; no task child then)
        "late_uss_task1": med(pool_tasks[p][0][1] for p in late if pool_tasks.get(p)),
        "late_uss_tasklast": med(pool_tasks[p][-1][1] for p in late if pool_tasks.get(p)),
        "late_uss_probe": med(pool[p]["uss_after"] for p in late),
        "late_copy_probe": med(pool[p]["uss_after"] - pool[p]["uss_before"] for p in late),
        "helper_uss": med(
            (max((x["uss"] for x in by_pid.get(p, [])), default=None)) for p in helpers
        ),
        "tree_pss": statistics.median(second_half) if second_half else None,
        "tree_pss_series": [(t, rounds[t]) for t in ts],
        "main_growth": [g for g, _ in growth],
        "main_growth_forks": [n for _, n in growth],
        "main_uss_end": sum(by_pid[m][-1]["uss"] for m in mains if by_pid.get(m)),
        "collect_ms": statistics.median(colls) * 1000 if colls else None,
        "collect_max_ms": max(colls) * 1000 if colls else None,
        "collections": len(colls),
        "frozen": {pid: (v[0], v[-1]) if v else None for pid, v in frozen.items()},
        "tasks_per_min": res["tasks_done"] / (res["elapsed"] / 60) if res["elapsed"] else None,
        "failed": res["tasks"].get("failed", 0),
    }


def run_provider(args) -> int:
    scenarios = [x.strip() for x in args.scenarios.split(",") if x.strip()]
    unknown = [x for x in scenarios if x not in SCENARIOS]
    if unknown:
        raise common.SeriesError(f"unknown scenario(s) {unknown}: choose from {', '.join(SCENARIOS)}")
    out_dir = common.results_dir("celery-provider")
    if args.from_raw:
        saved = json.loads(Path(args.from_raw).read_text())
        raw, meta = saved["runs"], saved["args"]
        for key, value in meta.items():
            setattr(args, key, value)
    else:
        builds = _provider_builds(args)
        raw = {}
        with common.progress() as prog:
            for scenario in scenarios:
                for build in builds:
                    name = f"{scenario}: {build.label}"
                    task = prog.add_task(f"{name}: stack up + {args.duration:.0f} s of load", total=args.duration)
                    raw[name] = _measure_provider(name, build, scenario, args, prog, task)
                    prog.update(task, completed=args.duration)
    meta = {
        k: getattr(args, k)
        for k in ("duration", "age", "workers", "concurrency", "parallelism", "recycles", "probe_delay")
    }
    (out_dir / "raw.json").write_text(json.dumps({"args": meta, "runs": raw}, indent=1, default=str))
    summaries = {name: _provider_summary(res, args) for name, res in raw.items()}
    md = out_dir / "results.md"
    headers = [
        "run",
        "pool forks (late)",
        "initial pool USS aged MB",
        "late pool USS aged MB (idle samples, all)",
        "... only before its 1st task (n)",
        "... only after its 1st task (n)",
        "vs unpatched (before / after 1st task)",
        "tasks per late pool process: median (max)",
        "late pool USS at end of 1st / last task MB",
        "late pool USS after 1st full collection MB",
        "copied by it MB",
        "vs unpatched",
        "cleanup helper USS MB",
        "worker trees PSS MB",
        "vs unpatched",
        "main USS end MB",
        f"main RSS growth over {args.recycles} recycles MB",
        "main full collections after ready: n, median (max) ms",
        "main frozen objects first -> last",
        "tasks/min",
    ]
    rows = []
    for name, s in summaries.items():
        base = next(
            (summaries[n] for n, r in raw.items() if r["scenario"] == raw[name]["scenario"] and not r["patched"]),
            None,
        )

        def vs(key):
            return common.ratio(s[key], base[key]) if base and s.get(key) and base.get(key) else "-"

        rows.append(
            [
                name,
                f"{s['pool_forks']} ({s['late_forks']})",
                _fmt(s["initial_uss_aged"]),
                f"{_fmt(s['late_uss_aged'])} ({s['late_idle_measured']})",
                f"{_fmt(s.get('late_uss_aged_notask'))} ({s.get('late_notask_measured', 0)})",
                f"{_fmt(s.get('late_uss_aged_task'))} ({s.get('late_task_measured', 0)})",
                vs("late_uss_aged_notask") + " / " + vs("late_uss_aged_task"),
                f"{s['late_tasks_each']:g} ({s['late_tasks_max']})" if s.get("late_tasks_each") is not None else "-",
                f"{_fmt(s.get('late_uss_task1'))} / {_fmt(s.get('late_uss_tasklast'))}",
                _fmt(s["late_uss_probe"]),
                _fmt(s["late_copy_probe"]),
                vs("late_uss_probe") + " / idle " + vs("late_uss_aged"),
                _fmt(s["helper_uss"]),
                _fmt(s["tree_pss"]),
                vs("tree_pss"),
                _fmt(s["main_uss_end"]),
                ", ".join(_fmt(g) for g in s["main_growth"]) or "- (too few recycles)",
                f"{s['collections']}, {s['collect_ms']:.0f} ({s['collect_max_ms']:.0f})"
                if s["collect_ms"] is not None
                else "0",
                ", ".join(f"{a} -> {b}" for a, b in (v for v in s["frozen"].values() if v)) or "0",
                f"{s['tasks_per_min']:.0f}" + (f" ({s['failed']} failed)" if s["failed"] else ""),
            ]
        )
    title = (
        f"celery provider 3.26.0 patched vs unpatched on Airflow 3.3.2: {args.workers} workers x concurrency "
        f"{args.concurrency} (autoscale: --autoscale 8,2), {args.duration:.0f} s of load, [core] parallelism "
        f"{args.parallelism}, forced full collection every {args.age:g} s in forked children + one "
        f"{args.probe_delay:g} s after each fork of a worker's child"
    )
    common.print_table(title, headers, rows)
    common.write_markdown_table(md, title, headers, rows)
    png = out_dir / "celery-provider.png"
    _plot_provider(png, raw, summaries, args)
    common.console.print(f"results: {md}, {png}, {out_dir / 'raw.json'}")
    return 0


def _plot_provider(path: Path, raw: dict, summaries: dict, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(raw)
    fig, (ax_tree, ax_bar) = plt.subplots(1, 2, figsize=(14, 5))
    styles = {False: "tab:red", True: "tab:green"}
    for name in names:
        series = summaries[name]["tree_pss_series"]
        ax_tree.plot(
            [t for t, _ in series],
            [v / MB for _, v in series],
            color=styles[raw[name]["patched"]],
            ls="-" if raw[name]["scenario"] == "recycle" else "--",
            label=name,
        )
    ax_tree.set_xlabel("seconds since the stack was up")
    ax_tree.set_ylabel("MB")
    ax_tree.set_title("PSS of both worker trees (main, pool, helpers, tasks)")
    ax_tree.legend(fontsize=7)
    metrics = [
        ("late_uss_probe", "late pool USS\nafter 1st collection"),
        ("late_uss_aged_notask", "late pool USS idle,\nbefore 1st task"),
        ("late_uss_aged_task", "late pool USS idle,\nafter 1st task"),
        ("initial_uss_aged", "initial pool USS\nidle, aged"),
        ("helper_uss", "cleanup helper\nUSS"),
        ("main_uss_end", "worker mains\nUSS (sum)"),
    ]
    width = 0.8 / max(1, len(names))
    for i, name in enumerate(names):
        vals = [(summaries[name].get(k) or 0) / MB for k, _ in metrics]
        ax_bar.bar(
            [j + i * width for j in range(len(metrics))],
            vals,
            width,
            color=styles[raw[name]["patched"]],
            alpha=1.0 if raw[name]["scenario"] == "recycle" else 0.5,
            label=name,
        )
    ax_bar.set_xticks([j + 0.4 - width / 2 for j in range(len(metrics))], [m for _, m in metrics], fontsize=7)
    ax_bar.set_ylabel("MB")
    ax_bar.set_title("per process (median)")
    ax_bar.legend(fontsize=7)
    fig.suptitle(
        f"CeleryExecutor on 3.3.2, provider 3.26.0 patched vs unpatched: {args.workers} workers, "
        f"concurrency {args.concurrency} / --autoscale 8,2"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
