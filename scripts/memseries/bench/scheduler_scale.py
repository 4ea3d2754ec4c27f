"""scheduler-scale: scheduler heap and time vs data size (asset events, finished TIs, due DAGs), 3.3.2 vs patched.

For each backend (SQLite, PostgreSQL) and each build (unpatched 3.3.2, 3.3.2 + series) the payload
(payloads/scheduler_scale.py, run by that build's Python, one fresh migrated metadata DB per invocation, rows made
with bulk INSERTs) measures the real scheduler methods with tracemalloc (peak) and wall time, sweeping the data:

- asset-triggered run creation (``_create_dag_runs_asset_triggered``) at --events events (issue #16 (a));
- executor-event processing (``process_executor_events``) of one SUCCESS event for a run that consumed --consumed
  events (b), and of one FAILED event of a task with a failure callback and e-mail, whose requests must carry the
  same events on both builds (compared by a digest of the events);
- ``task_instance_scheduling_decisions`` on a run with --mapped mapped TIs, 99 % finished (c);
- ``_create_dag_runs`` with --dags due DAGs of 5 tasks (d);

then a real ``airflow scheduler`` process on the largest case (the asset-triggered DAG with the most events queued,
the largest mapped run running) and reports its peak RSS (the kernel's VmHWM) until it has created the run and made
a few more loops. Both builds run in this one invocation; run it under ``flock /work/coord/heavy.lock``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from memseries.bench import common

PAYLOAD = "scheduler_scale.py"
BASE = "3.3.2"  # the base issue #16's patches are written for
# (scenario, title, size label)
SCENARIOS = (
    (
        "asset_create",
        "asset-triggered run creation (_create_dag_runs_asset_triggered)",
        "events in the window",
    ),
    ("executor_success", "process_executor_events, one SUCCESS event", "events the run consumed"),
    (
        "executor_failure",
        "process_executor_events, one FAILED event with callback + e-mail",
        "events the run consumed",
    ),
    ("decisions", "task_instance_scheduling_decisions, 99 % of mapped TIs finished", "mapped TIs"),
    ("create_runs", "_create_dag_runs", "due DAGs (5 tasks each)"),
)
FLAT_LIMIT_MB = 2.0  # (a), (b): peak heap at the largest event count


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backends", default="sqlite,postgres", help="comma-separated: sqlite, postgres (both)"
    )
    parser.add_argument("--events", default="1000,10000,50000", help="asset-triggered run creation: events")
    parser.add_argument("--consumed", default="10000,50000", help="executor events: events the run consumed")
    parser.add_argument(
        "--mapped", default="1000,10000", help="scheduling decisions: mapped TIs (99%% finished)"
    )
    parser.add_argument("--dags", default="100,1000", help="_create_dag_runs: due DAGs")
    parser.add_argument(
        "--no-real-scheduler", action="store_true", help="skip the real `airflow scheduler` run"
    )
    common.add_build_arguments(parser)
    parser.add_argument(
        "--pg-url",
        default=os.environ.get("MEMSERIES_PG_URL", "postgresql://postgres@127.0.0.1:5432"),
        help="PostgreSQL server (trust auth); each payload creates and drops its own database",
    )


def _builds(args) -> list[common.Build]:
    """[unpatched base, patched base]: this benchmark compares exactly those two (default base 3.3.2)."""
    from memseries.errors import SeriesError

    builds = [b for b in common.builds(args) if b.label.split("+")[0] == (args.base or BASE)]
    unpatched = [b for b in builds if not b.patched]
    patched = [b for b in builds if b.patched]
    if len(unpatched) != 1 or len(patched) != 1:
        raise SeriesError(
            "scheduler-scale compares the unpatched base with the patched build: use --builds base,patched"
        )
    return [unpatched[0], patched[0]]


def _find(results: dict, backend: str, label: str, scenario: str, size: int | None = None) -> dict | None:
    for r in results[(backend, label)]["results"]:
        if r["scenario"] == scenario and (size is None or r.get("size") == size):
            return r
    return None


def _loads(r: dict) -> str:
    return ", ".join(f"{v:,} {k}" for k, v in sorted(r.get("loads", {}).items())) or "-"


def _rows(results: dict, builds: list[common.Build], backend: str, scenario: str, sizes: list[int]):
    headers = ["size"]
    for b in builds:
        headers.append(f"{b.label}: peak MB / wall s / ORM rows loaded")
    headers += ["peak patched/base", "wall patched/base"]
    if scenario == "executor_failure":
        headers.append("events in callback + e-mail (base | patched), same digest")
    if scenario == "create_runs":
        headers.append("runs created, objects left in session (base | patched)")
    rows = []
    for size in sizes:
        cells = [_find(results, backend, b.label, scenario, size) for b in builds]
        if any(c is None for c in cells):
            continue
        row = [f"{size:,}"]
        for c in cells:
            row.append(f"{c['peak_mb']:.2f} / {c['wall_s']:.3f} / {_loads(c)}")
        row.append(common.ratio(cells[1]["peak_mb"], cells[0]["peak_mb"]))
        row.append(common.ratio(cells[1]["wall_s"], cells[0]["wall_s"]))
        if scenario == "executor_failure":
            same = cells[0]["digest"] == cells[1]["digest"]
            row.append(
                f"{cells[0]['events_in_requests']} | {cells[1]['events_in_requests']}, "
                f"{'same' if same else 'DIFFERENT'} ({cells[1]['digest']})"
            )
        if scenario == "create_runs":
            row.append(
                f"{cells[0]['runs_created']:,}, {cells[0]['objects_held']:,} | "
                f"{cells[1]['runs_created']:,}, {cells[1]['objects_held']:,}"
            )
        rows.append(row)
    return headers, rows


def _targets(results: dict, builds: list[common.Build], backends: list[str], args) -> list[str]:
    base, patched = builds[0].label, builds[1].label
    lines = []
    ev, cons, mapped = (max(map(int, s.split(","))) for s in (args.events, args.consumed, args.mapped))
    for backend in backends:
        for scenario, size in (("asset_create", ev), ("executor_success", cons)):
            r = _find(results, backend, patched, scenario, size)
            if r:
                ok = r["peak_mb"] <= FLAT_LIMIT_MB
                lines.append(
                    f"{backend}: {scenario} at {size:,} events: peak {r['peak_mb']:.2f} MB <= {FLAT_LIMIT_MB} MB: "
                    f"{'OK' if ok else 'MISSED'}"
                )
        f0, f1 = (_find(results, backend, b.label, "executor_failure", cons) for b in builds)
        if f0 and f1:
            same = f0["digest"] == f1["digest"] and f0["events_in_requests"] == f1["events_in_requests"]
            lines.append(
                f"{backend}: callback + e-mail requests carry the same {f1['events_in_requests']} events as {base}: "
                f"{'OK' if same else 'DIFFERENT'}"
            )
        d0, d1 = (_find(results, backend, b.label, "decisions", mapped) for b in builds)
        if d0 and d1:
            heap, wall = d1["peak_mb"] / d0["peak_mb"], d1["wall_s"] / d0["wall_s"]
            same = (d0["finished"], d0["unfinished"], d0["schedulable"]) == (
                d1["finished"],
                d1["unfinished"],
                d1["schedulable"],
            )
            lines.append(
                f"{backend}: decisions at {mapped:,} TIs: heap {heap:.2f}x <= 0.3x, wall {wall:.2f}x <= 0.5x: "
                f"{'OK' if heap <= 0.3 and wall <= 0.5 else 'MISSED'}; same decision: {'yes' if same else 'NO'}"
            )
        s0, s1 = (_find(results, backend, b.label, "real_scheduler") for b in builds)
        if s0 and s1 and not (s0.get("error") or s1.get("error")):
            ratio = s1["peak_rss_mb"] / s0["peak_rss_mb"]
            lines.append(
                f"{backend}: real scheduler peak RSS {s1['peak_rss_mb']:.0f} vs {s0['peak_rss_mb']:.0f} MB "
                f"({ratio:.2f}x) <= 0.5x: {'OK' if ratio <= 0.5 else 'MISSED'}"
            )
    return lines


def _plot(results: dict, builds: list[common.Build], backends: list[str], out_dir: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        2 * len(backends), len(SCENARIOS), figsize=(4.2 * len(SCENARIOS), 6.5 * len(backends)), squeeze=False
    )
    for bi, backend in enumerate(backends):
        for si, (scenario, title, xlabel) in enumerate(SCENARIOS):
            ax_mem, ax_time = axes[2 * bi][si], axes[2 * bi + 1][si]
            for b in builds:
                res = sorted(
                    (r for r in results[(backend, b.label)]["results"] if r["scenario"] == scenario),
                    key=lambda r: r["size"],
                )
                if not res:
                    continue
                x = [r["size"] for r in res]
                ax_mem.plot(x, [r["peak_mb"] for r in res], marker="o", label=b.label)
                ax_time.plot(x, [r["wall_s"] for r in res], marker="o", label=b.label)
            for ax in (ax_mem, ax_time):
                ax.set_xscale("log")
                ax.set_yscale("log")
                ax.grid(True, which="both", alpha=0.3)
                ax.set_xlabel(xlabel)
                ax.legend(fontsize=7)
            ax_mem.set_title(f"{backend}: {title}", fontsize=8)
            ax_mem.set_ylabel("tracemalloc peak MB")
            ax_time.set_ylabel("wall s")
    fig.suptitle("Scheduler memory vs data size: Airflow 3.3.2 vs 3.3.2 + series (issue #16)")
    fig.tight_layout()
    path = out_dir / "scheduler-scale.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def run(args) -> int:
    builds = _builds(args)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    for b in backends:
        if b not in ("sqlite", "postgres"):
            raise SystemExit(f"unknown backend {b!r}: choose sqlite and/or postgres")
    out_dir = common.results_dir("scheduler-scale")
    results: dict[tuple[str, str], dict] = {}
    payload_args = [
        "--events",
        args.events,
        "--consumed",
        args.consumed,
        "--mapped",
        args.mapped,
        "--dags",
        args.dags,
    ]
    if not args.no_real_scheduler:
        payload_args.append("--real-scheduler")
    with common.progress() as prog:
        task = prog.add_task("scheduler-scale", total=len(backends) * len(builds))
        for backend in backends:
            for build in builds:
                prog.update(task, description=f"{backend} {build.label}")
                results[(backend, build.label)] = common.run_payload(
                    build, PAYLOAD, "--backend", backend, "--pg-url", args.pg_url, *payload_args, timeout=3600
                )
                prog.advance(task)
    (out_dir / "raw.json").write_text(
        json.dumps({f"{backend} {label}": res for (backend, label), res in results.items()}, indent=1)
    )
    md = out_dir / "scheduler-scale.md"
    for backend in backends:
        for scenario, title, _ in SCENARIOS:
            sizes = sorted(
                {
                    r["size"]
                    for b in builds
                    for r in results[(backend, b.label)]["results"]
                    if r["scenario"] == scenario
                }
            )
            if not sizes:
                continue
            headers, rows = _rows(results, builds, backend, scenario, sizes)
            full = f"{title}, {backend} (tracemalloc peak; wall untraced)"
            common.print_table(full, headers, rows)
            common.write_markdown_table(md, full, headers, rows)
        s = [_find(results, backend, b.label, "real_scheduler") for b in builds]
        for b, r in zip(builds, s):
            if r and r.get("error"):
                common.console.print(f"real scheduler, {backend} {b.label}: {r['error']}")
        if all(s) and not any(r.get("error") for r in s):
            title = (
                f"real `airflow scheduler`, {backend}: asset-triggered run of {s[0]['events']:,} events + "
                f"running run of {s[0]['mapped']:,} mapped TIs"
            )
            headers = ["build", "peak RSS MB (VmHWM)", "largest sampled RSS MB", "run created after s"]
            rows = [
                [
                    b.label,
                    f"{r['peak_rss_mb']:.0f}",
                    f"{r['sampled_rss_mb']:.0f}",
                    f"{r['run_created_after_s']:.1f}",
                ]
                for b, r in zip(builds, s)
            ]
            rows.append(["patched/base", common.ratio(s[1]["peak_rss_mb"], s[0]["peak_rss_mb"]), "", ""])
            common.print_table(title, headers, rows)
            common.write_markdown_table(md, title, headers, rows)
    targets = _targets(results, builds, backends, args)
    common.console.print("Targets (issue 16):")
    for line in targets:
        common.console.print(f"  {line}")
    with md.open("a") as f:
        f.write("Targets (issue 16):\n\n" + "".join(f"- {line}\n" for line in targets) + "\n")
    png = _plot(results, builds, backends, out_dir)
    common.console.print(f"wrote {md}, {png} and raw.json in {out_dir}")
    return 0
