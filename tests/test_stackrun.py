"""The demo's analysis and report from synthetic samples (no stack): rows, summary, and the files it writes."""

from __future__ import annotations

from pathlib import Path

from memseries import paths
from memseries.stack import Sample
from memseries.stackrun import report as report_mod
from memseries.stackrun.analysis import SUMMARY_HEADERS, proc_table, summary_row
from memseries.stackrun.run import DemoBuild, RunResult

MIB = 1024 * 1024


def _result(label: str, patched: bool, worker_end_mib: int) -> RunResult:
    samples = []
    for t, uss in ((10.0, 10), (20.0, worker_end_mib), (30.0, worker_end_mib)):
        samples.append(Sample(t, 101, "worker", (uss + 20) * MIB, uss * MIB, (uss + 40) * MIB, "airflow worker"))
        samples.append(Sample(t, 100, "scheduler", 200 * MIB, 150 * MIB, 250 * MIB, "airflow scheduler", children=1))
    return RunResult(DemoBuild(label, Path("/nonexistent"), patched), 60.0, samples, {"success": 30}, {"worker": [0.5]},
                     warmup=5.0, fork_uss={101: 8 * MIB}, scheduler_peak_rss=300 * MIB, conf_run="success, 500/500 TIs")


def test_rows_summary_and_files(tmp_path, monkeypatch):
    results = [_result("3.3.2", False, 60), _result("3.3.2+memfix", True, 20)]
    rows = {(r[0], r[1]): r for r in proc_table(results)}
    assert rows[("3.3.2", "worker 1")][5:] == ["8.0", "60.0", "+52.0"]
    assert rows[("3.3.2+memfix", "worker 1")][5:] == ["8.0", "20.0", "+12.0"]
    summary = dict(zip(SUMMARY_HEADERS, summary_row(results[1])))
    assert summary["scheduler peak RSS MiB"] == "300"
    assert summary["1 MiB-conf mapped run"] == "success, 500/500 TIs"
    monkeypatch.setattr(paths, "BENCH_RESULTS", tmp_path)
    out = report_mod.report(results, "demo", "memseries demo")
    assert sorted(p.name for p in out.iterdir()) == ["demo.png", "samples.csv", "table.md"]
    assert "| 3.3.2+memfix | worker 1 | 1 |" in (out / "table.md").read_text()
