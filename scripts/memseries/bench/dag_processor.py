"""dag-processor: the real `airflow dag-processor` parsing DAG files that import numpy, over and over.

For each build the payload (payloads/dag_processor.py, run by that build's Python) migrates a temp SQLite
AIRFLOW_HOME, writes `--dags` DAG files that import numpy and a few of its submodules, and runs
`airflow dag-processor --num-runs RUNS` with min_file_process_interval 0. A probe (sitecustomize + at-fork hook)
records in every parse process: wall time from the fork to the end of the DAG file, USS/PSS at that point,
and the time of a full gc.collect() there (plus USS after it).

Configurations, in one invocation: unpatched 3.1.3; patched 3.1.3 with `[dag_processor] preload_modules` unset
(patch 0004, the freezes); patched with preload_modules = numpy and the submodules the DAGs import (0005);
3.3.2; and, unless --no-floor, patched with DAG files that import no library at all (the parse-process floor:
what a parse costs when there is nothing left to preload).

"first round" = the first parse of each file in a dag-processor run (nothing preloaded yet); "steady" = all
later parses, where the medians in the table come from. With --repeat N, the configurations run N times,
interleaved round by round (the machine may be shared), and their parses are pooled.
Targets (issue 6): gc.collect in a parse process <= 1 ms; with preloading, parse wall time >= 5x faster and
parse-process USS <= 1/3 of preload off.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from memseries.bench import common

PAYLOAD = "dag_processor.py"
PRELOAD = "numpy, numpy.fft, numpy.linalg, numpy.ma, numpy.polynomial, numpy.random"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common.add_build_arguments(parser)
    parser.add_argument("--dags", type=int, default=4, help="DAG files, each importing numpy (4)")
    parser.add_argument("--runs", type=int, default=6, help="parses of each file (6)")
    parser.add_argument("--parallelism", type=int, default=2, help="[dag_processor] parsing_processes (2)")
    parser.add_argument(
        "--preload", default=PRELOAD, help=f"preload_modules for the preload-on run ({PRELOAD!r})"
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="rounds over all configurations, interleaved; parses pooled (1)"
    )
    parser.add_argument("--no-floor", action="store_true", help="skip the patched run over library-free DAGs")



def _configs(builds: list[common.Build], args) -> list[tuple[str, common.Build, list[str]]]:
    """(name, build, extra payload args) for every run of this invocation, in table order."""
    out = []
    for b in builds:
        if b.patched:
            out.append((f"{b.label} preload off", b, []))
            out.append((f"{b.label} preload on", b, ["--preload", args.preload]))
        else:
            out.append((b.label, b, []))
    if not args.no_floor:
        for b in builds:
            if b.patched:
                out.append((f"{b.label} no library (floor)", b, ["--no-library"]))
    return out


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _summarise(results: list[dict]) -> dict:
    """Pool the parses of every repetition of one configuration."""
    parses, first, steady = [], [], []
    for res in results:
        seen: set[str] = set()
        for p in sorted(res["parses"], key=lambda p: p["t_end"]):
            (steady if p["file"] in seen else first).append(p)
            seen.add(p["file"])
            parses.append(p)
    steady = steady or first
    return {
        "n": len(parses),
        "first_parse_ms": _median([p["parse_s"] * 1000 for p in first]),
        "parse_ms": _median([p["parse_s"] * 1000 for p in steady]),
        "uss": _median([p["uss"] for p in steady]),
        "pss": _median([p["pss"] for p in steady]),
        "uss_after_gc": _median([p["uss_after_gc"] for p in steady]),
        "gc_ms": _median([p["gc_s"] * 1000 for p in steady]),
        "gc_ms_max": max(p["gc_s"] * 1000 for p in steady),
        "tracked": _median([p["tracked_after_gc"] for p in steady]),
        "inherited": sum(1 for p in steady if p["numpy_inherited"]) / len(steady),
        "series_ms": [p["parse_s"] * 1000 for p in parses],
        "manager_log": results[0].get("manager_log", []),
    }


def run(args) -> int:
    builds = common.builds(args)
    configs = _configs(builds, args)
    out_dir = common.results_dir("dag-processor")
    raw: dict[str, list[dict]] = {}
    with common.progress() as prog:
        task = prog.add_task("dag-processor", total=len(configs) * args.repeat)
        # Configurations interleaved round by round, so that load from elsewhere on the machine
        # spreads over all of them rather than skewing one.
        for rep in range(args.repeat):
            for name, build, extra in configs:
                prog.update(task, description=f"{name} ({rep + 1}/{args.repeat})")
                raw.setdefault(name, []).append(
                    common.run_payload(
                        build,
                        PAYLOAD,
                        "--dags",
                        str(args.dags),
                        "--runs",
                        str(args.runs),
                        "--parallelism",
                        str(args.parallelism),
                        *extra,
                        timeout=900,
                    )
                )
                prog.advance(task)
    (out_dir / "raw.json").write_text(json.dumps(raw, indent=1))
    agg = {name: _summarise(res) for name, res in raw.items()}

    base_name = configs[0][0]
    off = next((n for n, b, e in configs if b.patched and not e), None)
    on = next((n for n, b, e in configs if b.patched and "--preload" in e), None)
    headers = [
        "configuration",
        "parses",
        "1st-round parse ms",
        "parse ms",
        "USS MB",
        "PSS MB",
        "USS after gc MB",
        "gc.collect ms",
        "gc max ms",
        "tracked objs",
        "numpy inherited",
        "parse vs base",
        "USS vs base",
    ]
    rows = []
    for name, _, _ in configs:
        a, base = agg[name], agg[base_name]
        rows.append(
            [
                name,
                a["n"],
                f"{a['first_parse_ms']:.0f}",
                f"{a['parse_ms']:.0f}",
                common.mb(a["uss"]),
                common.mb(a["pss"]),
                common.mb(a["uss_after_gc"]),
                f"{a['gc_ms']:.2f}",
                f"{a['gc_ms_max']:.2f}",
                int(a["tracked"]),
                f"{a['inherited']:.0%}",
                common.ratio(a["parse_ms"], base["parse_ms"]),
                common.ratio(a["uss"], base["uss"]),
            ]
        )
    title = (
        f"dag-processor: {args.dags} numpy DAG files x {args.runs} parses x {args.repeat} round(s), "
        f"parsing_processes {args.parallelism} (medians over steady parses; per parse process)"
    )
    common.print_table(title, headers, rows)
    md = out_dir / "results.md"
    common.write_markdown_table(md, title, headers, rows)

    if off and on:
        a_off, a_on = agg[off], agg[on]
        speedup = a_off["parse_ms"] / a_on["parse_ms"]
        uss_ratio = a_on["uss"] / a_off["uss"]
        t_headers = ["target", "measured", "met"]
        t_rows = [
            [
                "gc.collect in a parse process <= 1 ms (preload on, median)",
                f"{a_on['gc_ms']:.2f} ms",
                "yes" if a_on["gc_ms"] <= 1 else "no",
            ],
            [
                "gc.collect in a parse process <= 1 ms (preload off, median)",
                f"{a_off['gc_ms']:.2f} ms",
                "yes" if a_off["gc_ms"] <= 1 else "no",
            ],
            [
                "parse wall time >= 5x faster with preloading",
                f"{speedup:.1f}x",
                "yes" if speedup >= 5 else "no",
            ],
            [
                "parse-process USS <= 1/3 of preload off",
                f"{uss_ratio:.2f}x",
                "yes" if uss_ratio <= 1 / 3 else "no",
            ],
        ]
        floor = next((n for n, b, e in configs if "--no-library" in e), None)
        if floor:
            fl = agg[floor]["uss"]
            lib_off, lib_on = a_off["uss"] - fl, a_on["uss"] - fl
            t_rows.append(
                [
                    "(context) USS above the no-library floor, on / off",
                    f"{common.mb(lib_on)} / {common.mb(lib_off)} MB = {common.ratio(lib_on, lib_off)}",
                    "-",
                ]
            )
        common.print_table("targets (issue 6)", t_headers, t_rows)
        common.write_markdown_table(md, "targets (issue 6)", t_headers, t_rows)
    log_rows = [[name, line] for name, _, _ in configs for line in agg[name]["manager_log"]]
    if log_rows:
        common.write_markdown_table(
            md, "patched manager's freeze / preload log lines", ["configuration", "line"], log_rows
        )
    _plot(out_dir / "dag_processor.png", configs, agg)
    common.console.print(f"results: {md}, {out_dir / 'dag_processor.png'}, {out_dir / 'raw.json'}")
    return 0


def _plot(path: Path, configs, agg) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n, _, _ in configs]
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.8))
    ax = axes[0]
    for n in names:
        ax.plot(range(1, len(agg[n]["series_ms"]) + 1), agg[n]["series_ms"], marker=".", label=n)
    ax.set_yscale("log")
    ax.set_xlabel("parse # (in completion order)")
    ax.set_ylabel("fork -> end of DAG file (ms)")
    ax.set_title("per-parse wall time")
    ax.legend(fontsize=7)
    xs = range(len(names))
    ax = axes[1]
    w = 0.28
    for i, (key, label) in enumerate([("uss", "USS"), ("pss", "PSS"), ("uss_after_gc", "USS after gc")]):
        bars = ax.bar([x + (i - 1) * w for x in xs], [agg[n][key] / 1e6 for n in names], w, label=label)
        ax.bar_label(bars, fmt="%.0f", fontsize=6)
    ax.set_xticks(list(xs), names, rotation=20, ha="right", fontsize=7)
    ax.set_ylabel("MB")
    ax.set_title("parse process memory at end of parse (median)")
    ax.legend(fontsize=7)
    ax = axes[2]
    bars = ax.bar(list(xs), [agg[n]["gc_ms"] for n in names])
    ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.axhline(1.0, color="red", linestyle="--", linewidth=1, label="target 1 ms")
    ax.set_yscale("log")
    ax.set_xticks(list(xs), names, rotation=20, ha="right", fontsize=7)
    ax.set_ylabel("ms")
    ax.set_title("full gc.collect() in a parse process (median)")
    ax.legend(fontsize=7)
    fig.suptitle("airflow dag-processor parsing numpy-importing DAG files")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
