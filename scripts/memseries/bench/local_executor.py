"""local-executor: per-worker PSS/USS of aged LocalExecutor workers, 3.1.3 vs patched vs 3.3.2 (patch 0001).

For each build the payload (payloads/local_executor.py, run by that build's Python, one build at a time)
imports the scheduler stack, holds a scheduler-like heap (serialized + deserialized DAGs), starts a real
LocalExecutor (fork) and feeds it a steady stream of ExecuteTask workloads for --duration seconds. The
workers run a synthetic task instead of a real task process, and are *aged*: each runs a full gc.collect()
--age-after seconds after its fork and then every --age-every seconds (in production the first full
collection comes an hour or more in, and that is when a worker copies the scheduler's heap). psutil's
memory_full_info() samples every worker's PSS and USS each --interval seconds; gc.freeze()/gc.unfreeze()
are timed in the executor's process.

Output: an smem-like per-worker table and a per-build summary with ratios (printed and in results.md), a PNG
time series, raw.json; all in bench-results/local-executor-<timestamp>/. Targets (issue 3): per-worker USS
growth on the patched build <= 1/5 of unpatched 3.1.3's and <= 3.3.2's, total worker PSS <= 3.3.2's,
freeze+unfreeze <= 50 us per batch.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from memseries.bench import common

PAYLOAD = "local_executor.py"
MB = 1e6


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common.add_build_arguments(parser)
    parser.add_argument("--duration", type=float, default=75.0, help="seconds of workload per build (75)")
    parser.add_argument("--parallelism", type=int, default=4, help="LocalExecutor parallelism (4)")
    parser.add_argument("--rate", type=float, default=8.0, help="tasks queued per second (8)")
    parser.add_argument(
        "--task-seconds", type=float, default=0.3, help="duration of each synthetic task (0.3)"
    )
    parser.add_argument(
        "--age-after", type=float, default=8.0, help="first forced full collection, s after fork (8)"
    )
    parser.add_argument("--age-every", type=float, default=20.0, help="then a full collection every N s (20)")
    parser.add_argument("--interval", type=float, default=1.0, help="memory sampling interval in s (1)")
    parser.add_argument("--dags", type=int, default=200, help="DAGs in the scheduler-like heap (200)")
    parser.add_argument("--tasks", type=int, default=50, help="tasks per DAG (50)")
    parser.add_argument(
        "--check-targets", action="store_true", help="exit 1 when a target of issue 3 is missed"
    )



def _workers(res: dict) -> dict[str, dict]:
    """pid -> {first, last, t_first, t_last, series} from the payload's samples."""
    out: dict[str, dict] = {}
    for s in res["samples"]:
        for pid, m in s["workers"].items():
            w = out.setdefault(pid, {"first": m, "t_first": s["t"], "series": []})
            w["last"], w["t_last"] = m, s["t"]
            w["series"].append((s["t"], m["uss"], m["pss"]))
    return out


def _summary(res: dict) -> dict:
    workers = _workers(res)
    growth = [w["last"]["uss"] - w["first"]["uss"] for w in workers.values()]
    last = res["samples"][-1]
    batches = [b["total_us"] for b in res["batches"]]
    collects = [ms for v in res["collects_ms"].values() for ms in v]
    first_collects = [v[0] for v in res["collects_ms"].values() if v]
    return {
        "workers": len(workers),
        "workers_after_start": res["workers_after_start"],
        "uss_start": statistics.mean(w["first"]["uss"] for w in workers.values()),
        "uss_end": statistics.mean(w["last"]["uss"] for w in workers.values()),
        "pss_start": statistics.mean(w["first"]["pss"] for w in workers.values()),
        "pss_end": statistics.mean(w["last"]["pss"] for w in workers.values()),
        "uss_growth": statistics.mean(growth),
        "uss_growth_max": max(growth),
        "total_pss_end": sum(m["pss"] for m in last["workers"].values()),
        "total_uss_end": sum(m["uss"] for m in last["workers"].values()),
        "parent_pss_end": last["parent"]["pss"] if last["parent"] else 0,
        "parent_rss_end": last["parent"]["rss"] if last["parent"] else 0,
        "batches": len(batches),
        "batch_us_median": statistics.median(batches) if batches else None,
        "batch_us_max": max(batches) if batches else None,
        "collect_ms_first": statistics.median(first_collects) if first_collects else None,
        "collect_ms_median": statistics.median(collects) if collects else None,
        "collections": len(collects),
        "tasks": f"{res['succeeded']}/{res['queued']}"
        + (f" ({res['failed']} failed)" if res["failed"] else ""),
        "tracked_objects": res["tracked_objects"],
    }


def run(args) -> int:
    builds = common.builds(args)
    out_dir = common.results_dir("local-executor")
    raw: dict[str, dict] = {}
    payload_args = [
        "--duration",
        args.duration,
        "--parallelism",
        args.parallelism,
        "--rate",
        args.rate,
        "--task-seconds",
        args.task_seconds,
        "--age-after",
        args.age_after,
        "--age-every",
        args.age_every,
        "--interval",
        args.interval,
        "--dags",
        args.dags,
        "--tasks",
        args.tasks,
    ]
    with common.progress() as prog:
        task = prog.add_task("local-executor", total=len(builds))
        for build in builds:
            prog.update(task, description=f"{build.label}: {args.duration:.0f} s of aged workers")
            raw[build.label] = common.run_payload(build, PAYLOAD, *payload_args, timeout=args.duration + 600)
            prog.advance(task)
    (out_dir / "raw.json").write_text(json.dumps(raw, indent=1))

    md = out_dir / "results.md"
    labels = [b.label for b in builds]
    summaries = {label: _summary(raw[label]) for label in labels}

    # smem-like: one row per worker
    headers = [
        "build",
        "worker pid",
        "start PSS MB",
        "end PSS MB",
        "start USS MB",
        "end USS MB",
        "USS growth MB",
        "full collections (first, ms)",
    ]
    rows = []
    for label in labels:
        res = raw[label]
        for pid, w in sorted(_workers(res).items(), key=lambda kv: kv[1]["t_first"]):
            c = res["collects_ms"].get(pid, [])
            rows.append(
                [
                    label,
                    pid,
                    common.mb(w["first"]["pss"]),
                    common.mb(w["last"]["pss"]),
                    common.mb(w["first"]["uss"]),
                    common.mb(w["last"]["uss"]),
                    common.mb(w["last"]["uss"] - w["first"]["uss"]),
                    f"{len(c)} ({c[0]:.0f})" if c else "0",
                ]
            )
    title = (
        f"local-executor: per-worker memory, aged workers (parallelism {args.parallelism}, "
        f"{args.duration:.0f} s, {args.rate:g} tasks/s, full gc.collect() at {args.age_after:g} s "
        f"then every {args.age_every:g} s)"
    )
    common.print_table(title, headers, rows)
    common.write_markdown_table(md, title, headers, rows)

    base = summaries.get("3.1.3")
    upstream = summaries.get("3.3.2")
    headers = [
        "build",
        "workers (at start)",
        "tasks ok",
        "USS start -> end MB",
        "USS growth MB",
        "vs 3.1.3",
        "vs 3.3.2",
        "total worker USS MB",
        "total worker PSS MB",
        "vs 3.3.2",
        "parent PSS MB",
        "parent RSS MB",
    ]
    rows = []
    for label in labels:
        s = summaries[label]
        rows.append(
            [
                label,
                f"{s['workers']} ({s['workers_after_start']})",
                s["tasks"],
                f"{common.mb(s['uss_start'])} -> {common.mb(s['uss_end'])}",
                common.mb(s["uss_growth"]),
                common.ratio(s["uss_growth"], base["uss_growth"]) if base else "-",
                common.ratio(s["uss_growth"], upstream["uss_growth"]) if upstream else "-",
                common.mb(s["total_uss_end"]),
                common.mb(s["total_pss_end"]),
                common.ratio(s["total_pss_end"], upstream["total_pss_end"]) if upstream else "-",
                common.mb(s["parent_pss_end"]),
                common.mb(s["parent_rss_end"]),
            ]
        )
    title = "local-executor: per-build summary (USS: mean per worker; PSS: all workers at the end)"
    common.print_table(title, headers, rows)
    common.write_markdown_table(md, title, headers, rows)

    headers = [
        "build",
        "freeze+unfreeze batches",
        "median us/batch",
        "max us/batch",
        "worker full gc.collect ms (first)",
        "(median of all)",
        "parent tracked objects",
    ]
    rows = []
    for label in labels:
        s = summaries[label]
        rows.append(
            [
                label,
                s["batches"],
                f"{s['batch_us_median']:.1f}" if s["batches"] else "n/a",
                f"{s['batch_us_max']:.1f}" if s["batches"] else "n/a",
                f"{s['collect_ms_first']:.1f}" if s["collections"] else "-",
                f"{s['collect_ms_median']:.1f}" if s["collections"] else "-",
                s["tracked_objects"],
            ]
        )
    title = (
        "local-executor: GC cost (executor process: freeze+unfreeze per fork batch; workers: full collection)"
    )
    common.print_table(title, headers, rows)
    common.write_markdown_table(md, title, headers, rows)

    ok = True
    patched = next((summaries[b.label] for b in builds if b.patched), None)
    if patched:
        checks = []
        if base:
            checks.append(
                (
                    "USS growth <= 1/5 of 3.1.3's",
                    patched["uss_growth"] <= base["uss_growth"] / 5,
                    f"{common.mb(patched['uss_growth'])} vs {common.mb(base['uss_growth'])} MB",
                )
            )
        if upstream:
            checks.append(
                (
                    "USS growth <= 3.3.2's",
                    patched["uss_growth"] <= upstream["uss_growth"],
                    f"{common.mb(patched['uss_growth'])} vs {common.mb(upstream['uss_growth'])} MB",
                )
            )
            checks.append(
                (
                    "total worker PSS <= 3.3.2's",
                    patched["total_pss_end"] <= upstream["total_pss_end"],
                    f"{common.mb(patched['total_pss_end'])} vs {common.mb(upstream['total_pss_end'])} MB",
                )
            )
        checks.append(
            (
                "freeze+unfreeze <= 50 us per batch",
                bool(patched["batches"]) and patched["batch_us_max"] <= 50,
                f"max {patched['batch_us_max']:.1f} us over {patched['batches']} batch(es)"
                if patched["batches"]
                else "no batch",
            )
        )
        if upstream:
            # Informational: PSS also holds each worker's share of the pages it still shares with the
            # executor's process, so it follows the size of that process (imports, heap), which differs
            # between Airflow versions and which this patch does not change; USS is what the workers add.
            checks.append(
                (
                    "(info) total worker USS <= 3.3.2's",
                    patched["total_uss_end"] <= upstream["total_uss_end"],
                    (
                        f"{common.mb(patched['total_uss_end'])} vs {common.mb(upstream['total_uss_end'])} MB;"
                        f" parent RSS {common.mb(patched['parent_rss_end'])} vs "
                        f"{common.mb(upstream['parent_rss_end'])} MB"
                    ),
                )
            )
        rows = [[name, "met" if good else "MISSED", detail] for name, good, detail in checks]
        ok = all(good for name, good, _ in checks if not name.startswith("(info)"))
        common.print_table("targets (issue 3), patched build", ["target", "result", "measured"], rows)
        common.write_markdown_table(
            md, "targets (issue 3), patched build", ["target", "result", "measured"], rows
        )

    png = out_dir / "local_executor.png"
    _plot(png, labels, raw, args)
    common.console.print(f"results: {md}, {png}, {out_dir / 'raw.json'}")
    return 1 if (args.check_targets and not ok) else 0


def _plot(path: Path, labels: list[str], raw: dict, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = dict(zip(labels, ["tab:red", "tab:green", "tab:blue", "tab:orange"]))
    fig, (ax_uss, ax_pss) = plt.subplots(1, 2, figsize=(13, 4.8))
    for label in labels:
        res = raw[label]
        for i, w in enumerate(_workers(res).values()):
            ts = [t for t, _, _ in w["series"]]
            ax_uss.plot(
                ts,
                [u / MB for _, u, _ in w["series"]],
                color=colors[label],
                lw=1,
                alpha=0.8,
                label=label if i == 0 else None,
            )
        ts = [s["t"] for s in res["samples"]]
        ax_pss.plot(
            ts,
            [sum(m["pss"] for m in s["workers"].values()) / MB for s in res["samples"]],
            color=colors[label],
            lw=1.5,
            label=label,
        )
    for ax in (ax_uss, ax_pss):
        t = args.age_after
        while t < args.duration:
            ax.axvline(t, color="grey", lw=0.5, ls=":")
            t += args.age_every
        ax.set_xlabel("seconds since executor.start() (dotted: forced full collections, from each fork)")
        ax.legend(fontsize=8)
    ax_uss.set_ylabel("MB")
    ax_uss.set_title("USS of each LocalExecutor worker")
    ax_pss.set_title("total PSS of all workers")
    fig.suptitle(f"LocalExecutor, parallelism {args.parallelism}, aged workers, {args.rate:g} tasks/s")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
