"""scheduler-examine: memory and time of the scheduler's examine query + verify-integrity, per DAG size.

For each backend (SQLite, PostgreSQL) and each build (unpatched 3.1.3, patched 3.1.3, upstream 3.3.2) the
payload (payloads/scheduler_examine.py, run by that build's Python, one fresh migrated metadata DB per
invocation) creates R running DAG runs x N tasks of a real serialized DAG, for each N in --sizes, and
measures ``DagRun.get_running_dag_runs_to_examine`` followed by
``SchedulerJobRunner._verify_integrity_if_dag_changed`` for every examined run, with the DAG unchanged and
after a new DAG version (one added task) was written: tracemalloc current (still allocated at the end,
examined runs still referenced) and peak, TaskInstances materialised from the DB, and wall time (median of
--repeat untraced runs). The TIs of each run are in a realistic mix of states (40 % success, 10 % each
running/queued/scheduled, 30 % no state yet). Patch 0002 (#60956) is what the patched build should change.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from memseries.bench import common

PAYLOAD = "scheduler_examine.py"
SCENARIOS = ("unchanged", "changed")
# targets from issue 5 (patched build, DAG unchanged): total TIs -> max tracemalloc current MB
CURRENT_TARGETS = {2_000: 0.30, 10_000: 0.35}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common.add_build_arguments(parser)
    parser.add_argument(
        "--backends", default="sqlite,postgres", help="comma-separated: sqlite, postgres (both)"
    )
    parser.add_argument(
        "--sizes",
        default="50,100,500",
        help="comma-separated tasks per DAG (default 50,100,500; add 2000 if time)",
    )
    parser.add_argument("--runs", type=int, default=20, help="running DAG runs (default 20)")
    parser.add_argument("--repeat", type=int, default=3, help="untraced timing repetitions, median kept (3)")
    parser.add_argument(
        "--pg-url",
        default=os.environ.get("MEMSERIES_PG_URL", "postgresql://postgres@127.0.0.1:5432"),
        help="PostgreSQL server (trust auth); each payload creates and drops its own database",
    )



def _fmt(x: float, digits: int = 2) -> str:
    return f"{x:.{digits}f}"


def _rows(results: dict, builds: list[common.Build], backend: str, scenario: str, sizes: list[int]):
    """Rows per DAG size, columns per build (like the table in PR #60956), plus ratios."""
    base = next((b.label for b in builds if not b.patched and b.label.startswith("3.1.")), None)
    patched = next((b.label for b in builds if b.patched), None)
    upstream = next((b.label for b in builds if b.label.startswith("3.3")), None)
    headers = ["tasks/DAG (TIs)"] + [f"{b.label}: current/peak MB, TIs loaded, wall s" for b in builds]
    if base and patched:
        headers.append(f"current {patched}/{base}")
    if upstream and patched:
        headers.append(f"peak {patched}/{upstream}")
    rows = []
    for size in sizes:
        cells = {}
        for b in builds:
            cells[b.label] = next(
                r
                for r in results[(backend, b.label)]["results"]
                if r["tasks"] == size and r["scenario"] == scenario
            )
        any_r = next(iter(cells.values()))
        row = [f"{size} ({any_r['tis']:,})"]
        for b in builds:
            r = cells[b.label]
            row.append(
                f"{_fmt(r['current_mb'])} / {_fmt(r['peak_mb'])} MB, "
                f"{r['ti_loads']:,} TIs, {_fmt(r['wall_s'], 3)} s"
            )
        if base and patched:
            row.append(common.ratio(cells[patched]["current_mb"], cells[base]["current_mb"]))
        if upstream and patched:
            row.append(common.ratio(cells[patched]["peak_mb"], cells[upstream]["peak_mb"]))
        rows.append(row)
    return headers, rows


def _targets(results: dict, builds: list[common.Build], backends: list[str]) -> list[str]:
    """Issue 5's targets checked against this run (informational: printed and written, exit code stays 0)."""
    patched = next((b.label for b in builds if b.patched), None)
    upstream = next((b.label for b in builds if b.label.startswith("3.3")), None)
    lines = []
    if not patched:
        return lines
    for backend in backends:
        res = results[(backend, patched)]["results"]
        for r in res:
            limit = CURRENT_TARGETS.get(r["tis"])
            if r["scenario"] == "unchanged" and limit is not None:
                ok = r["current_mb"] <= limit
                lines.append(
                    f"{backend}: {r['tis']:,} TIs, DAG unchanged: current {r['current_mb']:.3f} MB "
                    f"<= {limit} MB: {'OK' if ok else 'MISSED'}"
                )
        if upstream:
            up = results[(backend, upstream)]["results"]
            for r in (x for x in res if x["scenario"] == "changed"):
                u = next(x for x in up if x["scenario"] == "changed" and x["tasks"] == r["tasks"])
                # "no worse": within 10 % (+ 0.05 MB of noise) of 3.3.2 on both current and peak
                ok = all(r[k] <= u[k] * 1.10 + 0.05 for k in ("current_mb", "peak_mb"))
                lines.append(
                    f"{backend}: {r['tis']:,} TIs, DAG changed: current/peak {r['current_mb']:.2f}/"
                    f"{r['peak_mb']:.2f} MB vs {upstream} {u['current_mb']:.2f}/{u['peak_mb']:.2f}: "
                    f"{'OK' if ok else 'WORSE'}"
                )
    return lines


def _plot(
    results: dict, builds: list[common.Build], backends: list[str], sizes: list[int], out_dir: Path
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2 * len(backends), figsize=(6 * len(backends) * 2 / 1.5, 8), squeeze=False)
    for bi, backend in enumerate(backends):
        for si, scenario in enumerate(SCENARIOS):
            col = bi * 2 + si
            ax_mem, ax_time = axes[0][col], axes[1][col]
            for b in builds:
                res = sorted(
                    (r for r in results[(backend, b.label)]["results"] if r["scenario"] == scenario),
                    key=lambda r: r["tis"],
                )
                if not res:
                    continue
                x = [r["tis"] for r in res]
                (line,) = ax_mem.plot(
                    x, [r["current_mb"] for r in res], marker="o", label=f"{b.label} current"
                )
                ax_mem.plot(
                    x,
                    [r["peak_mb"] for r in res],
                    marker="x",
                    linestyle="--",
                    color=line.get_color(),
                    label=f"{b.label} peak",
                )
                ax_time.plot(x, [r["wall_s"] for r in res], marker="o", label=b.label, color=line.get_color())
            for ax in (ax_mem, ax_time):
                ax.set_xscale("log")
                ax.set_yscale("log")
                ax.grid(True, which="both", alpha=0.3)
                ax.set_xlabel("TaskInstances of the examined runs")
            ax_mem.set_title(f"{backend}, DAG {scenario}")
            ax_mem.set_ylabel("tracemalloc MB")
            ax_time.set_ylabel("wall time s (examine + verify)")
            ax_mem.legend(fontsize=7)
            ax_time.legend(fontsize=7)
    fig.suptitle("Scheduler: get_running_dag_runs_to_examine + _verify_integrity_if_dag_changed")
    fig.tight_layout()
    path = out_dir / "scheduler-examine.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run(args) -> int:
    builds = common.builds(args)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    for b in backends:
        if b not in ("sqlite", "postgres"):
            raise SystemExit(f"unknown backend {b!r}: choose sqlite and/or postgres")
    sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()})
    out_dir = common.results_dir("scheduler-examine")
    results: dict[tuple[str, str], dict] = {}
    total_tis = sum(sizes) * args.runs
    with common.progress() as prog:
        task = prog.add_task("scheduler-examine", total=len(backends) * len(builds))
        for backend in backends:
            for build in builds:
                prog.update(task, description=f"{backend} {build.label}")
                results[(backend, build.label)] = common.run_payload(
                    build,
                    PAYLOAD,
                    "--backend",
                    backend,
                    "--pg-url",
                    args.pg_url,
                    "--sizes",
                    ",".join(map(str, sizes)),
                    "--runs",
                    str(args.runs),
                    "--repeat",
                    str(args.repeat),
                    timeout=900 + 0.1 * total_tis * (args.repeat + 2),
                )
                prog.advance(task)
    (out_dir / "raw.json").write_text(
        json.dumps({f"{backend} {label}": res for (backend, label), res in results.items()}, indent=1)
    )
    md = out_dir / "scheduler-examine.md"
    for backend in backends:
        for scenario in SCENARIOS:
            title = (
                f"examine + verify-integrity, {args.runs} running runs, DAG {scenario}, {backend} "
                f"(tracemalloc; wall = median of {args.repeat})"
            )
            headers, rows = _rows(results, builds, backend, scenario, sizes)
            common.print_table(title, headers, rows)
            common.write_markdown_table(md, title, headers, rows)
    targets = _targets(results, builds, backends)
    if targets:
        common.console.print("Targets (issue 5):")
        for line in targets:
            common.console.print(f"  {line}")
        with md.open("a") as f:
            f.write("Targets (issue 5):\n\n" + "".join(f"- {line}\n" for line in targets) + "\n")
    png = _plot(results, builds, backends, sizes, out_dir)
    common.console.print(f"wrote {md}, {png} and raw.json in {out_dir}")
    return 0
