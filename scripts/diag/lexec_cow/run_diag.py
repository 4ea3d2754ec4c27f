"""Where a LocalExecutor worker's private memory comes from (diagnostic, not part of the memseries CLI).

Usage: .venv/tools/bin/python scripts/diag/lexec_cow/run_diag.py VENV [SECONDS] [PARALLELISM]
SQLite stack (aged workers), then per process USS/PSS by role, page-table comparisons worker vs zygote (or
scheduler), zygote vs scheduler, and module/gc snapshots from ldiag_site.py.
"""
import json, os, sys, time, tempfile
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import psutil
from memseries.stack import aging, EXAMPLE_DAGS, Stack, StackConfig, default_classify, mib
import pagecmp, worddiff

venv = Path(sys.argv[1]).absolute()
duration = float(sys.argv[2]) if len(sys.argv) > 2 else 120
par = int(sys.argv[3]) if len(sys.argv) > 3 else 4
method = sys.argv[4] if len(sys.argv) > 4 else "fork"
aging.SITECUSTOMIZE = aging.SITECUSTOMIZE + "\n" + (Path(__file__).parent / "ldiag_site.py").read_text()
diag = Path(tempfile.mkdtemp(prefix="ldiag-"))

def print_pages(stats: dict) -> None:
    """One line per mapping with >= 128 KiB copied or new (shared/copied/new MiB; 4 KiB pages), then the total."""
    tot = [0, 0, 0]
    for lab, v in sorted(stats.items(), key=lambda kv: -(kv[1][1] + kv[1][2])):
        tot = [a + b for a, b in zip(tot, v)]
        if v[1] + v[2] >= 32:
            print(f"  {lab[:60]:60s} {v[0]/256:7.1f} {v[1]/256:7.1f} {v[2]/256:7.1f}")
    print(f"  {'TOTAL':60s} {tot[0]/256:7.1f} {tot[1]/256:7.1f} {tot[2]/256:7.1f}")

def classify(component, proc, title, parent_role):
    if title.startswith("airflow zygote"):
        return "zygote"
    return default_classify(component, proc, title, parent_role)
cfg = StackConfig(venv=venv, label="ldiag", backend="sqlite", parallelism=par, age_interval=15,
                  env={"MEMSERIES_LDIAG": str(diag), "PYTHONDONTWRITEBYTECODE": "1",
                       "PYTHONPYCACHEPREFIX": tempfile.mkdtemp(prefix="nopyc-")},
                  config={("core", "mp_start_method"): method})
with Stack(cfg, classify=classify, log=print) as st:
    t0 = time.time()
    while time.time() - t0 < duration:
        st.check_alive(); time.sleep(5)
    procs = st.processes()
    print("diag dir", diag)
    byrole = {}
    for p in procs:
        try:
            mi = psutil.Process(p.pid).memory_full_info()
        except psutil.Error:
            continue
        byrole.setdefault(p.role, []).append((p.pid, mi.uss, mi.pss, mi.rss, p.title[:70]))
    for role, ps in sorted(byrole.items()):
        for pid, uss, pss, rss, title in ps:
            print(f"{role:16s} {pid:7d} USS {mib(uss):6.1f} PSS {mib(pss):6.1f} RSS {mib(rss):6.1f}  {title}")
    sched = [p.pid for p in procs if p.role == "scheduler"]
    zyg = [p.pid for p in procs if p.role == "zygote"]
    workers = [p.pid for p in procs if p.role == "worker"]
    ref = zyg[0] if zyg else sched[0]
    if not sched: sched = [ref]
    for w in workers[:2]:
        try:
            st_ = pagecmp.compare(w, ref)
        except Exception as e:
            print("cmp failed", e); continue
        print(f"== worker {w} vs {'zygote' if zyg else 'scheduler'} {ref}: shared/copied/new MiB")
        print_pages(st_)
    for w in workers[:1]:
        print(f"== worddiff worker {w} vs {ref}")
        worddiff.main(w, ref)
    if zyg:
        print(f"== worddiff zygote vs scheduler")
        worddiff.main(zyg[0], sched[0])
        st_ = pagecmp.compare(zyg[0], sched[0])
        print(f"== zygote {zyg[0]} vs scheduler {sched[0]}")
        print_pages(st_)
    # modules
    def mods(path):
        lines = path.read_text().splitlines()
        i = lines.index("--modules") if "--modules" in lines else 0
        return set(lines[i + 1:] if i else lines[1:])
    for w in workers[:2] + zyg:
        f, s = diag / f"fork-{w}.txt", diag / f"state-{w}.txt"
        if f.exists() and s.exists():
            a, b = mods(f), mods(s)
            head = s.read_text().split("--modules")[0]
            print(f"== {w}: modules at fork {len(a)}, now {len(b)}; imported after fork ({len(b - a)}):")
            print("   " + " ".join(sorted(b - a)))
            print("   " + head.replace("\n", "\n   "))
