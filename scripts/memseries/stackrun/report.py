"""Output of a run: the tables (terminal + markdown), samples.csv, the PNG, log tails, under bench-results/."""

from __future__ import annotations

import csv
from pathlib import Path

from memseries.stack import mib  # noqa: F401 - kept for callers that took it from here
from memseries.stackrun.analysis import (
    LONG_LIVED,
    NOTES,
    PROC_HEADERS,
    SUMMARY_HEADERS,
    proc_table,
    process_rows,
    ratio_lines,
    summary_row,
    total_pss_series,
    worker_uss_series,
)
from memseries.stackrun.run import RunResult
from memseries.tables import markdown_table, print_table, results_dir


def write_samples_csv(path: Path, results: list[RunResult]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            ["build", "t_s", "pid", "role", "pss_bytes", "uss_bytes", "rss_bytes", "children", "title"]
        )
        for res in results:
            for s in res.samples:
                w.writerow(
                    [res.build.label, f"{s.t:.1f}", s.pid, s.role, s.pss, s.uss, s.rss, s.children, s.title]
                )


def plot(results: list[RunResult], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # unpatched base red, patched green, the upstream reference (run only beside an older base) blue
    colors = {res.build.label: "#2ca02c" if res.build.patched else ("#d62728" if i == 0 else "#1f77b4")
              for i, res in enumerate(results)}
    per_build = {res.build.label: process_rows(res, per_worker=True) for res in results}
    names: list[str] = []
    for rows in per_build.values():
        for r in rows:
            if r.process not in names and r.process != "workers (mean)":
                names.append(r.process)

    def order(name: str):
        if name in LONG_LIVED:
            return (0, LONG_LIVED.index(name))
        if name.startswith("worker "):
            return (1, int(name.split()[1]))
        return (2, 0)

    names.sort(key=order)

    fig, (ax_bar, ax_line) = plt.subplots(2, 1, figsize=(12, 10), gridspec_kw={"height_ratios": [3, 2]})
    n = len(per_build)
    height = 0.8 / max(1, n)
    for i, (label, rows) in enumerate(per_build.items()):
        by_name = {r.process: r for r in rows}
        ys = [k + i * height for k in range(len(names))]
        pss = [by_name[nm].pss1 if nm in by_name else 0 for nm in names]
        uss = [by_name[nm].uss1 if nm in by_name else 0 for nm in names]
        c = colors.get(label, None)
        ax_bar.barh(ys, pss, height=height, color=c, alpha=0.35, label=f"{label} PSS")
        ax_bar.barh(ys, uss, height=height * 0.5, color=c, alpha=0.95, label=f"{label} USS")
    ax_bar.set_yticks([k + height * (n - 1) / 2 for k in range(len(names))])
    ax_bar.set_yticklabels(names)
    ax_bar.invert_yaxis()
    ax_bar.set_xlabel("MiB at the end of the run (PSS wide/light, USS narrow/dark)")
    ax_bar.set_title(title)
    ax_bar.legend(loc="lower right", fontsize=8)
    ax_bar.grid(axis="x", alpha=0.3)

    for res in results:
        c = colors.get(res.build.label, None)
        ts, mean = worker_uss_series(res)
        ax_line.plot(
            ts, mean, color=c, marker=".", label=f"{res.build.label}: largest idle LocalExecutor worker USS"
        )
        ts, tot = total_pss_series(res, roles={"scheduler"})
        ax_line.plot(ts, tot, color=c, linestyle="--", label=f"{res.build.label}: scheduler PSS")
    ax_line.set_xlabel(
        f"seconds since start (workers aged by a forced gc.collect() every {results[0].age:g}s)"
        if results and results[0].age
        else "seconds since start"
    )
    ax_line.set_ylabel("MiB")
    ax_line.legend(fontsize=8)
    ax_line.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(results: list[RunResult], name: str, title: str, per_worker: bool = True) -> Path:
    out = results_dir(name)
    procs = proc_table(results, per_worker=per_worker)
    summ = [summary_row(r) for r in results]
    print_table(f"{title}: per process (MiB)", PROC_HEADERS, procs)
    print_table(f"{title}: task runs and totals", SUMMARY_HEADERS, summ)
    ratios = ratio_lines(results)
    for line in ratios:
        print(line)
    md = markdown_table(f"{title}: per process (MiB)", PROC_HEADERS, procs) + "\n"
    md += markdown_table(f"{title}: task runs and totals", SUMMARY_HEADERS, summ)
    if ratios:
        md += "\n" + "\n".join(f"- {line}" for line in ratios) + "\n"
    md += "\n" + NOTES
    for res in results:
        if res.failed_tasks:
            md += (
                f"\nFailed task instances on {res.build.label}: "
                + ", ".join(f"{d}.{t} x{n}" for d, t, n in res.failed_tasks)
                + "\n"
            )
            print(f"{res.build.label}: failed task instances: {res.failed_tasks} (logs in {out})")
        for component, text in res.log_tails.items():
            (out / f"log-{res.build.label}-{component}.txt").write_text(text)
    (out / "table.md").write_text(md)
    write_samples_csv(out / "samples.csv", results)
    png = out / f"{name}.png"
    plot(results, png, title)
    for res in results:
        if res.error:
            (out / f"error-{res.build.label}.txt").write_text(res.error)
    print(f"wrote {out / 'table.md'}, {png}, {out / 'samples.csv'}")
    return out
