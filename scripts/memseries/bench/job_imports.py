"""job-imports: memory and import time of real `airflow dag-processor` / `airflow triggerer` at steady state.

For each build (unpatched 3.1.3, patched 3.1.3, 3.3.2) the payload (payloads/job_imports.py, run by that
build's Python) migrates a temp SQLite AIRFLOW_HOME, starts each component as a real CLI process in its own
process group, waits until it is steady (warm-up elapsed, module count unchanged), samples psutil
memory_full_info() of the process (and of its process tree), counts the `airflow.executors.*` modules it
has loaded and sums its `-X importtime` output, then stops the group (SIGTERM, then SIGKILL).
Patch 0003 (Job without executors, #60766) is what the patched build should change here.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from memseries.bench import common

PAYLOAD = "job_imports.py"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common.add_build_arguments(parser)
    parser.add_argument(
        "--components", default="dag-processor,triggerer", help="comma-separated (default both)"
    )
    parser.add_argument("--warmup", type=float, default=25.0, help="seconds before sampling may start (25)")
    parser.add_argument(
        "--stable", type=float, default=8.0, help="module count unchanged this long = steady (8)"
    )
    parser.add_argument(
        "--samples", type=int, default=5, help="memory samples, 1 s apart; the median is kept (5)"
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs per build; the median of runs is kept (1)"
    )



def _median(values: list[float]) -> float:
    values = sorted(values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def run(args) -> int:
    builds = common.builds(args)
    components = args.components.split(",")
    out_dir = common.results_dir("job-imports")
    raw: dict[str, list[dict]] = {}
    with common.progress() as prog:
        task = prog.add_task("job-imports", total=len(builds) * args.repeat)
        for build in builds:
            for i in range(args.repeat):
                prog.update(task, description=f"{build.label} run {i + 1}/{args.repeat}")
                res = common.run_payload(
                    build,
                    PAYLOAD,
                    "--components",
                    args.components,
                    "--warmup",
                    str(args.warmup),
                    "--stable",
                    str(args.stable),
                    "--samples",
                    str(args.samples),
                    timeout=900 + 300 * len(components),
                )
                raw.setdefault(build.label, []).append(res)
                prog.advance(task)
    (out_dir / "raw.json").write_text(json.dumps(raw, indent=1))

    # per build and component: median over repeats
    agg: dict[tuple[str, str], dict] = {}
    for label, runs in raw.items():
        for comp in components:
            rows = [r for run_ in runs for r in run_["results"] if r["component"] == comp]
            agg[(label, comp)] = {
                k: _median([r[k] for r in rows])
                for k in (
                    "uss",
                    "pss",
                    "rss",
                    "tree_uss",
                    "tree_pss",
                    "import_total_s",
                    "import_executors_s",
                    "n_modules",
                    "n_airflow_modules",
                )
            } | {"executor_modules": rows[-1]["executor_modules"]}

    base_label = builds[0].label
    headers = [
        "component",
        "build",
        "USS MB",
        "PSS MB",
        "tree PSS MB",
        "USS vs base",
        "import s",
        "exec import s",
        "modules",
        "airflow.executors.* modules",
    ]
    rows = []
    for comp in components:
        base = agg.get((base_label, comp))
        for b in builds:
            a = agg[(b.label, comp)]
            rows.append(
                [
                    comp,
                    b.label,
                    common.mb(a["uss"]),
                    common.mb(a["pss"]),
                    common.mb(a["tree_pss"]),
                    common.ratio(a["uss"], base["uss"]) if base else "-",
                    f"{a['import_total_s']:.2f}",
                    f"{a['import_executors_s']:.3f}",
                    int(a["n_modules"]),
                    len(a["executor_modules"]),
                ]
            )
    title = "job-imports: real dag-processor / triggerer at steady state (median; SQLite, LocalExecutor)"
    common.print_table(title, headers, rows)
    md = out_dir / "results.md"
    common.write_markdown_table(md, title, headers, rows)
    mod_rows = [
        [
            comp,
            b.label,
            ", ".join(
                m.removeprefix("airflow.executors") or "(package)"
                for m in agg[(b.label, comp)]["executor_modules"]
            )
            or "-",
        ]
        for comp in components
        for b in builds
    ]
    common.write_markdown_table(
        md, "airflow.executors.* modules loaded", ["component", "build", "modules"], mod_rows
    )
    _plot(out_dir / "job_imports.png", builds, components, agg)
    common.console.print(f"results: {md}, {out_dir / 'job_imports.png'}, {out_dir / 'raw.json'}")
    return 0


def _plot(path: Path, builds, components, agg) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [("uss", "USS (MB)"), ("pss", "PSS (MB)"), ("import_total_s", "import time (s)")]
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4.2))
    width = 0.8 / len(builds)
    for ax, (key, label) in zip(axes, metrics):
        for i, b in enumerate(builds):
            vals = [agg[(b.label, c)][key] / (1e6 if key != "import_total_s" else 1) for c in components]
            xs = [j + i * width for j in range(len(components))]
            bars = ax.bar(xs, vals, width, label=b.label)
            ax.bar_label(bars, fmt="%.1f", fontsize=7)
        ax.set_xticks([j + width * (len(builds) - 1) / 2 for j in range(len(components))], components)
        ax.set_title(label)
    axes[0].legend(fontsize=8)
    fig.suptitle("airflow dag-processor / triggerer at steady state")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
