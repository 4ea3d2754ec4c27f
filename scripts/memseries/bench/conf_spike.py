"""conf-spike: the scheduler's heap and RSS for one run of a 500-way mapped task triggered with a ~1 MB conf.

On Airflow 3.3.2 every TaskInstance query of the scheduling loop joins the run and decodes its JSON ``conf`` once
per row (apache/airflow#71267; 3.3.2 patch 0002). Per backend and build (unpatched 3.3.2 and 3.3.2+memfix, in one
invocation) the payload (payloads/conf_spike.py, run by that build's Python) takes examples/dags/mapped_conf.py
and measures, each part in a fresh migrated metadata DB:

- heap: the real scheduler code paths called in-process under tracemalloc, with statement counts: mapped
  expansion (_schedule_dag_run), the next _schedule_dag_run, the critical section, executor-event processing
  and the _schedule_dag_run that finishes the run;
- scheduler: a real ``airflow scheduler`` process (stub executor that marks queued TIs successful, so no worker
  competes) scheduling the triggered run to completion: its peak RSS (VmHWM) before the trigger and overall.

Targets (issue 12): every step's heap peak patched <= 0.1x 3.3.2's with the same statement count; the scheduler's
peak RSS patched <= 0.5x 3.3.2's. Writes conf-spike.md, conf-spike.png and raw.json under bench-results/.
"""

from __future__ import annotations

import argparse
import json
import os

from memseries import paths
from memseries.bench import common

PAYLOAD = "conf_spike.py"
DAG_FILE = paths.REPO / "examples" / "dags" / "mapped_conf.py"
HEAP_TARGET = 0.1
RSS_TARGET = 0.5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common.add_build_arguments(parser)
    parser.add_argument(
        "--backends", default="sqlite,postgres", help="comma-separated: sqlite, postgres (both)"
    )
    parser.add_argument("--parts", default="heap,scheduler", help="comma-separated: heap, scheduler (both)")
    parser.add_argument(
        "--mapped", type=int, default=500, help="map size of the DAG (must match the DAG file: 500)"
    )
    parser.add_argument("--conf-kib", type=int, default=1024, help="conf size in KiB (default 1024)")
    parser.add_argument(
        "--settle", type=float, default=20.0, help="idle scheduler seconds before the trigger (20)"
    )
    parser.add_argument(
        "--timeout", type=float, default=900.0, help="max seconds for the triggered run (900)"
    )
    parser.add_argument(
        "--pg-url",
        default=os.environ.get("MEMSERIES_PG_URL", "postgresql://postgres@127.0.0.1:5432"),
        help="PostgreSQL server (trust auth); each payload creates and drops its own database",
    )


def _ratio(new: float, old: float) -> str:
    return f"{new / old:.3f}x" if old else "n/a"


def _tables(results: dict, base: common.Build, patched: common.Build, backend: str, parts: list[str]):
    """(title, headers, rows) per part for one backend, plus target verdict lines."""
    out, verdicts = [], []
    b, p = base.label, patched.label
    if "heap" in parts:
        rb, rp = results[(backend, b, "heap")], results[(backend, p, "heap")]
        headers = [
            "step",
            f"{b} peak MB",
            f"{p} peak MB",
            f"peak {p}/{b}",
            f"{b} statements",
            f"{p} statements",
        ]
        rows = []
        for sb, sp in zip(rb["steps"], rp["steps"], strict=True):
            ratio = sp["peak_mb"] / sb["peak_mb"]
            rows.append(
                [
                    sb["step"],
                    f"{sb['peak_mb']:.1f}",
                    f"{sp['peak_mb']:.1f}",
                    _ratio(sp["peak_mb"], sb["peak_mb"]),
                    sb["statements"],
                    sp["statements"],
                ]
            )
            ok = ratio <= HEAP_TARGET and sb["statements"] == sp["statements"]
            verdicts.append(
                f"{backend} {sb['step']}: heap {ratio:.3f}x (target <= {HEAP_TARGET}x), statements "
                f"{sp['statements']} vs {sb['statements']} -> {'met' if ok else 'MISSED'}"
            )
        title = (
            f"conf-spike heap (tracemalloc), {backend}: {rb['tis']} mapped TIs, conf {rb['conf_bytes'] / 2**20:.2f} MiB; "
            f"run {rb['run_state']} ({b}) / {rp['run_state']} ({p})"
        )
        out.append((title, headers, rows))
    if "scheduler" in parts:
        rb, rp = results[(backend, b, "scheduler")], results[(backend, p, "scheduler")]
        headers = ["airflow scheduler", b, p, f"{p}/{b}"]
        rows = [
            [
                "peak RSS before the trigger (VmHWM, MB)",
                rb["peak_rss_before_trigger_mb"],
                rp["peak_rss_before_trigger_mb"],
                _ratio(rp["peak_rss_before_trigger_mb"], rb["peak_rss_before_trigger_mb"]),
            ],
            [
                "peak RSS while scheduling the run (VmHWM, MB)",
                rb["peak_rss_mb"],
                rp["peak_rss_mb"],
                _ratio(rp["peak_rss_mb"], rb["peak_rss_mb"]),
            ],
            [
                "peak RSS growth from the run (MB)",
                round(rb["peak_rss_mb"] - rb["peak_rss_before_trigger_mb"], 1),
                round(rp["peak_rss_mb"] - rp["peak_rss_before_trigger_mb"], 1),
                "",
            ],
            [
                "run state, TI states",
                f"{rb['run_state']} {rb['ti_states']}",
                f"{rp['run_state']} {rp['ti_states']}",
                "",
            ],
            [
                "trigger -> run finished (s)",
                round(rb["done_s"] - rb["trigger_s"], 1),
                round(rp["done_s"] - rp["trigger_s"], 1),
                "",
            ],
        ]
        ratio = rp["peak_rss_mb"] / rb["peak_rss_mb"]
        verdicts.append(
            f"{backend} scheduler peak RSS {ratio:.3f}x (target <= {RSS_TARGET}x) -> "
            f"{'met' if ratio <= RSS_TARGET else 'MISSED'}"
        )
        out.append((f"conf-spike: real airflow scheduler process, {backend}", headers, rows))
    return out, verdicts


def _plot(
    results: dict, base: common.Build, patched: common.Build, backends: list[str], parts: list[str], out_dir
):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        len(backends), len(parts), figsize=(6.5 * len(parts), 4.2 * len(backends)), squeeze=False
    )
    for row, backend in enumerate(backends):
        col = 0
        if "heap" in parts:
            ax = axes[row][col]
            col += 1
            steps = [s["step"] for s in results[(backend, base.label, "heap")]["steps"]]
            width = 0.4
            for i, build in enumerate((base, patched)):
                peaks = [s["peak_mb"] for s in results[(backend, build.label, "heap")]["steps"]]
                xs = [x + (i - 0.5) * width for x in range(len(steps))]
                bars = ax.bar(xs, peaks, width, label=build.label)
                ax.bar_label(bars, fmt="%.0f", fontsize=7)
            ax.set_xticks(range(len(steps)), steps, fontsize=8)
            ax.set_yscale("log")
            ax.set_ylabel("tracemalloc peak MB")
            ax.set_title(f"{backend}: scheduler steps, heap peak")
            ax.legend(fontsize=8)
        if "scheduler" in parts:
            ax = axes[row][col]
            for build in (base, patched):
                r = results[(backend, build.label, "scheduler")]
                ts = [t - r["trigger_s"] for t, _ in r["rss_samples"]]
                ax.plot(
                    ts,
                    [m for _, m in r["rss_samples"]],
                    label=f"{build.label} (peak {r['peak_rss_mb']:.0f} MB)",
                )
            ax.axvline(0, color="grey", lw=0.8, ls="--")
            ax.set_xlabel("s since the run was triggered")
            ax.set_ylabel("scheduler RSS MB")
            ax.set_title(f"{backend}: airflow scheduler RSS")
            ax.legend(fontsize=8)
            ax.grid(True, alpha=0.3)
    fig.suptitle("conf-spike: one run, 500 mapped TIs, ~1 MiB conf")
    fig.tight_layout()
    path = out_dir / "conf-spike.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run(args) -> int:
    builds = common.builds(args)
    base = next((b for b in builds if not b.patched and b.label == args.base), None)
    patched = next((b for b in builds if b.patched), None)
    if base is None or patched is None:
        raise SystemExit(
            "conf-spike compares the unpatched base with its patched build: keep both in --builds"
        )
    builds = [base, patched]
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    for b in backends:
        if b not in ("sqlite", "postgres"):
            raise SystemExit(f"unknown backend {b!r}: choose sqlite and/or postgres")
    for p in parts:
        if p not in ("heap", "scheduler"):
            raise SystemExit(f"unknown part {p!r}: choose heap and/or scheduler")
    out_dir = common.results_dir("conf-spike")
    results: dict[tuple[str, str, str], dict] = {}
    with common.progress() as prog:
        task = prog.add_task("conf-spike", total=len(backends) * len(builds) * len(parts))
        for backend in backends:
            for part in parts:
                for build in builds:
                    prog.update(task, description=f"{backend} {part} {build.label}")
                    results[(backend, build.label, part)] = common.run_payload(
                        build,
                        PAYLOAD,
                        "--part",
                        part,
                        "--dag-file",
                        DAG_FILE,
                        "--backend",
                        backend,
                        "--pg-url",
                        args.pg_url,
                        "--mapped",
                        args.mapped,
                        "--conf-kib",
                        args.conf_kib,
                        "--settle",
                        args.settle,
                        "--timeout",
                        args.timeout,
                        timeout=args.timeout + 900,
                    )
                    prog.advance(task)
    (out_dir / "raw.json").write_text(
        json.dumps(
            {f"{backend} {label} {part}": r for (backend, label, part), r in results.items()}, indent=1
        )
    )
    md = out_dir / "conf-spike.md"
    all_verdicts = []
    for backend in backends:
        tables, verdicts = _tables(results, base, patched, backend, parts)
        for title, headers, rows in tables:
            common.print_table(title, headers, rows)
            common.write_markdown_table(md, title, headers, rows)
        all_verdicts += verdicts
    common.console.print("Targets (issue 12):")
    for line in all_verdicts:
        common.console.print(f"  {line}")
    with md.open("a") as f:
        f.write("Targets (issue 12):\n\n" + "".join(f"- {line}\n" for line in all_verdicts) + "\n")
    png = _plot(results, base, patched, backends, parts, out_dir)
    common.console.print(f"wrote {md}, {png} and raw.json in {out_dir}")
    return 0 if all(line.endswith("met") for line in all_verdicts) else 1
