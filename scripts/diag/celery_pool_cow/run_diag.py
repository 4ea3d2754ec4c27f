"""Where a celery prefork pool process's private memory comes from (diagnostic, not part of the memseries CLI).

Usage (heavy: under the heavy lock): .venv/tools/bin/python scripts/diag/celery_pool_cow/run_diag.py VENV [SECONDS]
[MAX_TASKS_PER_CHILD | autoscale]. Runs a CeleryExecutor stack (1 worker, concurrency 4, busy_python.py) whose worker loads
cow_site.py (appended to the harness's memseries_celery module): every pool process dumps its page table
(/proc/self/pagemap, PFNs: needs root) right after its fork and, at a series of stages (celery/billiard start-up
functions, task_prerun, the result backend's first store, run_workload, the supervisor's steps, its task fork,
task_postrun), counts the pages whose PFN changed since the fork ("copied": the pool process wrote to a page it
shared with the worker) and the pages that were not present at the fork ("new"), in MB. Also traces the first
import of a few modules. MEMSERIES_DIAG=full adds, at task_postrun, what the copied pages' changed words are.
Prints the stages of the first and last pool processes and the modules the pool processes imported.
"""
import json, os, sys, time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import memseries.celery_stack as cs
from memseries.celery_stack import CeleryOptions, CeleryStack
from memseries.stack import EXAMPLE_DAGS, StackConfig

venv = Path(sys.argv[1]).absolute()
duration = float(sys.argv[2]) if len(sys.argv) > 2 else 60
mode = sys.argv[3] if len(sys.argv) > 3 else "1"
autoscale = "8,2" if mode == "autoscale" else None  # --autoscale 8,2, no recycling: long-lived added processes
mtpc = 0 if autoscale else int(mode)
cs.CELERY_SITE_MODULE = cs.CELERY_SITE_MODULE + "\n" + (Path(__file__).parent / "cow_site.py").read_text()
cfg = StackConfig(venv=venv, label="diag", backend="postgres", parallelism=4, dags=[EXAMPLE_DAGS / "busy_python.py"],
                  age_interval=20, env={"MEMSERIES_DIAG": os.environ.get("MEMSERIES_DIAG", "1")}, keep_home=True)
opts = CeleryOptions(workers=1, concurrency=4, max_tasks_per_child=mtpc or None, autoscale=autoscale, probe_delay=0)
with CeleryStack(cfg, opts) as st:
    t0 = time.time()
    while time.time() - t0 < duration:
        st.check_alive(); time.sleep(5)
    d = st.celery_log_dir
    print("home", st.home)
    for f in sorted(d.glob("diagerr-*")):
        print(f.name, f.read_text()[:500])
    lines = [json.loads(l) for f in sorted(d.glob("diag-*")) for l in f.read_text().splitlines()]
    forks = st.forks()
    print(json.dumps({"forks": {k: v for k, v in forks.items()}}, default=str)[:2000])
    for x in lines:
        x["fork_wall"] = forks.get(x["pid"], (0,))[0]
        print(json.dumps(x))
    stages = {}
    for f in sorted(d.glob("stage-*")):
        pid = int(f.name.split("-")[1])
        stages[pid] = [l.split() for l in f.read_text().splitlines()]
    gcs = {int(f.name.split("-")[1]): f.read_text().splitlines() for f in d.glob("gc-*")}
    for pid, ls in sorted(stages.items()):
        # per task: postrun copied/new MB, modules; gc gen0/1/2 objects, frozen, USS MB, collections
        post = [l for l in ls if l[0] == "postrun"]
        g = gcs.get(pid, [])
        print("pertask", pid, "fork", forks.get(pid, (0,))[0] % 10000, "tasks", len(post))
        for i, l in enumerate(post):
            if i < 4 or i >= len(post) - 3 or i % 10 == 0:
                print("    task", i + 1, "copied", l[1], "new", l[2], "mods", l[3], "gc", g[i] if i < len(g) else "-")
    for pid, ls in sorted(stages.items())[:3] + sorted(stages.items())[-3:]:
        print("pool", pid, "fork", forks.get(pid, (0,))[0] % 10000)
        for l in ls:
            print("   ", l)
    mm = sorted(d.glob("mainmods-*"))
    pm = sorted(d.glob("poolmods-*"))
    if mm and pm:
        main_mods = set(mm[-1].read_text().split("\n--\n")[-2].split())
        pool_mods = set(pm[-1].read_text().split())
        print("modules the pool process imported:", len(pool_mods - main_mods))
        print(" ".join(sorted(pool_mods - main_mods)))
    it = sorted(d.glob("imptrace-*"))
    if it:
        print(it[-1].read_text()[-12000:])
