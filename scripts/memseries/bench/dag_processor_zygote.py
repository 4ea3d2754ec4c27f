"""dag-processor-zygote: parse-process memory, set-up time and throughput, unpatched 3.3.2 vs 3.3.2 + series.

The real `airflow dag-processor` of each build (payloads/dag_processor_zygote.py) over 20 and 200 small DAG files,
each parsed `--runs` times, with and without .pyc files. Per parse, read inside the parse process: USS when the
DAG file finishes executing, and set-up time from the fork to the DAG file's first line. Per run: files parsed
per second (parse ends, first to last), the USS/PSS of the manager and of the parse zygote(s) and the PSS of all
the dag-processor's processes (medians of the last 10 samples, 0.5 s apart), and the RAM the manager and its
zygote use together: distinct physical pages over both (pagemap, root only; median of samples 2 s apart).
USS alone misleads here: a page the manager shares with a live parse process is in nobody's USS, so unpatched
3.3.2's manager USS is low while its children live, and PSS hands part of every page the manager and zygote
share to the parse processes alive at that moment. The distinct-pages column is the exact answer to "manager +
zygote vs 3.3.2's manager"; the all-processes PSS is the RAM the dag-processor really uses.
`--compare-serialized` also runs both builds over Airflow's example DAGs and this repository's examples/dags and
compares every serialized DAG (serialized_dag.data) between the two builds.

Targets (issue 15): median per-parse USS <= 0.4x and median set-up <= 0.4x of 3.3.2's, files/s >= 1.5x, manager +
zygote <= 30 MB above 3.3.2's manager. Kept apart from bench dag-processor (3.1.3 + numpy preloading) while the
bench tooling is being restructured.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from memseries import paths
from memseries.bench import common

PAYLOAD = "dag_processor_zygote.py"
BASE = "3.3.2"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dags", default="20,200", help="comma-separated DAG file counts (20,200)")
    parser.add_argument("--runs", type=int, default=3, help="parses of each file per run (3)")
    parser.add_argument("--parallelism", type=int, default=2, help="[dag_processor] parsing_processes (2)")
    parser.add_argument("--pyc", default="off,on", help="comma-separated: off (no .pyc), on (compiled) (off,on)")
    parser.add_argument("--compare-serialized", action="store_true", help="also compare serialized DAGs")
    parser.add_argument("--no-parse", action="store_true", help="only --compare-serialized")
    parser.add_argument("--patched-python", type=Path, help="patched interpreter instead of the series venv")
    parser.add_argument("--base-python", type=Path, help="unpatched interpreter instead of the base venv")


def _builds(args) -> list[common.Build]:
    from memseries.venv import ensure_venv, local_version

    base = args.base_python or ensure_venv(BASE, patched=False) / "bin" / "python"
    patched = args.patched_python or ensure_venv(BASE, patched=True) / "bin" / "python"
    return [
        common.Build(BASE, Path(base).absolute(), False),
        common.Build(local_version(BASE), Path(patched).absolute(), True),
    ]


def _median(values) -> float:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else float("nan")


def _p90(values) -> float:
    values = sorted(v for v in values if v is not None)
    return values[int(0.9 * (len(values) - 1))] if values else float("nan")


def _summarise(res: dict) -> dict:
    parses = res["parses"]
    ends = [p["t_end"] for p in parses]
    rate = (len(ends) - 1) / (ends[-1] - ends[0]) if len(ends) > 1 and ends[-1] > ends[0] else float("nan")
    last = res["samples"][-1] if res["samples"] else {}
    tail = res["samples"][-10:] or [{}]
    manager = _median([s.get("manager_uss") or 0 for s in tail])
    zygote = _median([s.get("zygote_uss") or 0 for s in tail])
    manager_pss = _median([s.get("manager_pss") or 0 for s in tail])
    zygote_pss = _median([s.get("zygote_pss") or 0 for s in tail])
    family_pss = _median([s.get("family_pss") or 0 for s in tail])
    ram = [s["manager_zygote_ram"] for s in res["samples"] if s.get("manager_zygote_ram")]
    return {
        "n": len(parses),
        "uss_median": _median(p["uss"] for p in parses),
        "uss_p90": _p90(p["uss"] for p in parses),
        "setup_median": _median(p["setup_s"] for p in parses),
        "setup_p90": _p90(p["setup_s"] for p in parses),
        "rate": rate,
        "manager_uss": manager,
        "zygote_uss": zygote,
        "manager_pss": manager_pss,
        "zygote_pss": zygote_pss,
        "family_pss": family_pss,
        "manager_zygote_ram": _median(ram) if ram else None,
        "zygotes": last.get("zygotes", 0),
        "parents": len({p["ppid"] for p in parses}),
    }


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f}"


def run(args) -> int:
    builds = _builds(args)
    out_dir = common.results_dir("dag-processor-zygote")
    md = out_dir / "table.md"
    raw: dict = {}
    rows, agg = [], {}
    if not args.no_parse:
        dag_counts = [int(x) for x in args.dags.split(",")]
        pyc_modes = args.pyc.split(",")
        plan = [(d, pyc, b) for d in dag_counts for pyc in pyc_modes for b in builds]
        with common.progress() as prog:
            task = prog.add_task("dag-processor runs", total=len(plan))
            for dags, pyc, build in plan:
                name = f"{build.label} | {dags} files | pyc {pyc}"
                prog.update(task, description=name)
                extra = ["--pyc", str(Path("/tmp") / f"memseries-pyc-{build.venv.name}")] if pyc == "on" else []
                res = common.run_payload(
                    build,
                    PAYLOAD,
                    "--dags",
                    str(dags),
                    "--runs",
                    str(args.runs),
                    "--parallelism",
                    str(args.parallelism),
                    *extra,
                    timeout=3600,
                )
                raw[name] = res
                agg[(dags, pyc, build.label)] = s = _summarise(res)
                prog.advance(task)
        headers = [
            "build",
            "files",
            "pyc",
            "parses",
            "USS/parse median MiB (p90)",
            "setup median ms (p90)",
            "files/s",
            "manager USS MiB",
            "zygote USS MiB",
            "manager+zygote MiB",
            "manager+zygote PSS MiB",
            "all processes PSS MiB",
            "manager+zygote RAM MiB (distinct pages)",
            "USS ratio",
            "setup ratio",
            "files/s ratio",
            "mgr+zyg - base mgr MB",
            "RAM: mgr+zyg - base mgr MB",
        ]
        for dags, pyc, build in plan:
            s = agg[(dags, pyc, build.label)]
            b = agg[(dags, pyc, builds[0].label)]
            total = s["manager_uss"] + s["zygote_uss"]
            rows.append(
                [
                    build.label,
                    dags,
                    pyc,
                    s["n"],
                    f"{_mib(s['uss_median'])} ({_mib(s['uss_p90'])})",
                    f"{s['setup_median'] * 1000:.1f} ({s['setup_p90'] * 1000:.1f})",
                    f"{s['rate']:.1f}",
                    _mib(s["manager_uss"]),
                    _mib(s["zygote_uss"]) if s["zygotes"] else "-",
                    _mib(total),
                    _mib(s["manager_pss"] + s["zygote_pss"]),
                    _mib(s["family_pss"]),
                    _mib(s["manager_zygote_ram"]) if s["manager_zygote_ram"] else "-",
                    common.ratio(s["uss_median"], b["uss_median"]) if build.patched else "",
                    common.ratio(s["setup_median"], b["setup_median"]) if build.patched else "",
                    common.ratio(s["rate"], b["rate"]) if build.patched else "",
                    f"{(total - b['manager_uss']) / 1e6:+.1f}" if build.patched else "",
                    f"{(s['manager_zygote_ram'] - b['manager_zygote_ram']) / 1e6:+.1f}"
                    if build.patched and s["manager_zygote_ram"] and b["manager_zygote_ram"]
                    else "",
                ]
            )
        title = (
            f"dag-processor parse processes, {BASE} vs {builds[1].label} (runs {args.runs}, "
            f"parallelism {args.parallelism})"
        )
        common.print_table(title, headers, rows)
        common.write_markdown_table(md, title, headers, rows)
        _plot(out_dir / "dag_processor_zygote.png", builds, agg, dag_counts, pyc_modes)
    if args.compare_serialized:
        _compare_serialized(builds, out_dir, md, raw)
    (out_dir / "raw.json").write_text(json.dumps(raw, default=str))
    common.console.print(f"results: {md}, {out_dir}")
    return 0


def _compare_serialized(builds, out_dir: Path, md: Path, raw: dict) -> None:
    results = {}
    for build in builds:
        example_dags = build.venv / "lib" / "python3.11" / "site-packages" / "airflow" / "example_dags"
        res = common.run_payload(
            build,
            PAYLOAD,
            "--mode",
            "serialized",
            "--copy-dags",
            str(example_dags),
            "--copy-dags",
            str(paths.REPO / "examples" / "dags"),
            timeout=3600,
        )
        results[build.label] = res["serialized"]
        raw[f"serialized {build.label}"] = {"dags": len(res["serialized"]["dags"])}
    a, b = (results[x.label] for x in builds)
    ids = sorted(set(a["dags"]) | set(b["dags"]))
    equal = [i for i in ids if a["dags"].get(i) == b["dags"].get(i)]
    differ = [i for i in ids if i not in equal]
    rows = [
        ["DAGs serialized", len(a["dags"]), len(b["dags"])],
        ["identical serialized JSON", len(equal), len(equal)],
        ["different or missing", len(differ), ", ".join(differ[:10]) or "-"],
        ["files with import errors", len(a["import_errors"]), len(b["import_errors"])],
        ["import errors identical", a["import_errors"] == b["import_errors"], ""],
    ]
    title = f"serialized DAGs: Airflow's example DAGs + examples/dags, {builds[0].label} vs {builds[1].label}"
    headers = ["", builds[0].label, builds[1].label]
    common.print_table(title, headers, rows)
    common.write_markdown_table(md, title, headers, rows)
    (out_dir / "serialized-diff.json").write_text(
        json.dumps({i: {"base": a["dags"].get(i), "patched": b["dags"].get(i)} for i in differ}, default=str)
    )


def _plot(path: Path, builds, agg, dag_counts, pyc_modes) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [(d, p) for d in dag_counts for p in pyc_modes]
    metrics = [
        ("USS per parse at end of DAG file (MiB, median)", lambda s: s["uss_median"] / 2**20),
        ("set-up: fork -> DAG file's first line (ms, median)", lambda s: s["setup_median"] * 1000),
        ("files parsed per second", lambda s: s["rate"]),
        (
            "manager + zygote RAM, distinct pages (MiB; USS sum if unreadable)",
            lambda s: (s["manager_zygote_ram"] or s["manager_uss"] + s["zygote_uss"]) / 2**20,
        ),
        ("all dag-processor processes, PSS (MiB)", lambda s: s["family_pss"] / 2**20),
    ]
    fig, axes = plt.subplots(1, len(metrics), figsize=(24, 4.8))
    width = 0.38
    for ax, (title, fn) in zip(axes, metrics):
        for i, build in enumerate(builds):
            xs = [g + (i - 0.5) * width for g in range(len(groups))]
            ax.bar(xs, [fn(agg[(d, p, build.label)]) for d, p in groups], width, label=build.label)
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels([f"{d} files\npyc {p}" for d, p in groups])
        ax.set_title(title, fontsize=10)
    axes[0].legend()
    fig.suptitle("airflow dag-processor: parse processes, 3.3.2 vs 3.3.2 + series (parse zygote)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
