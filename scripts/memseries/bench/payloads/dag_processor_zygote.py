"""Payload of `memseries bench dag-processor-zygote`: the real `airflow dag-processor` over small DAG files.

Runs inside one Airflow venv (stdlib + psutil + airflow only). Two modes:

``parse`` (default): migrates a fresh SQLite AIRFLOW_HOME, writes ``--dags`` small DAG files (two EmptyOperators,
no library) and runs the real ``python -m airflow dag-processor`` (min_file_process_interval 0: files are
parsed back to back) in its own process group until DAGS x RUNS parses are recorded. A ``sitecustomize`` on
PYTHONPATH imports a probe in every process; it registers an at-fork hook (inherited by the parse zygote, so it
runs in parse processes forked from it too) noting the fork time. Each DAG file calls the probe on its FIRST
line (setup = fork -> first line of the DAG file) and on its LAST line (USS/PSS read inside the parse process
with psutil when the DAG file finishes executing). While it runs, the manager's and the zygote(s)' USS are
sampled (psutil, every 0.5 s); the last samples are reported. Every 2 s (from a quarter of the parses on) the
RAM the manager and its zygote(s) use together is read exactly: the number of distinct physical frames over
their /proc/PID/pagemap (needs CAP_SYS_ADMIN, else not reported). psutil cannot give it: USS leaves out the
pages the two share, and PSS moves part of each shared page to whichever parse processes happen to be alive.

``serialized``: the same dag-processor over ``--copy-dags`` (directories whose ``*.py`` are copied into the DAGs
folder: Airflow's example DAGs and this repository's examples), until the serialized DAGs stop changing; prints
every serialized DAG (``serialized_dag.data``) by dag_id, for comparison across builds.

``--pyc DIR``: run with PYTHONPYCACHEPREFIX=DIR after compiling the stdlib and site-packages into it (with
.pyc); without it the machine's default applies (PYTHONDONTWRITEBYTECODE=1, uv installs no .pyc: every import
compiles from source in every process that imports it).
Prints one JSON object on the last stdout line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

PROBE = r"""
import json, os, time

_OUT = os.environ.get("MEMSERIES_DAGPROC_OUT")
_fork = {}
_start = {}


def _after_fork_in_child():
    _fork["t"] = time.perf_counter()


if _OUT:
    os.register_at_fork(after_in_child=_after_fork_in_child)


def first_line():
    _start["t"] = time.perf_counter()


def last_line(dag_file):
    end = time.perf_counter()
    import psutil

    mem = psutil.Process().memory_full_info()
    record = {
        "file": os.path.basename(dag_file),
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "t_end": time.time(),
        "setup_s": _start["t"] - _fork["t"] if "t" in _fork and "t" in _start else None,
        "exec_s": end - _start["t"] if "t" in _start else None,
        "uss": mem.uss,
        "pss": mem.pss,
        "rss": mem.rss,
    }
    with open(_OUT, "a") as f:
        f.write(json.dumps(record) + "\n")
"""

SITECUSTOMIZE = "import _memseries_dagproc_probe  # noqa: F401\n"

DAG = """import _memseries_dagproc_probe; _memseries_dagproc_probe.first_line()
from airflow.sdk import DAG
from airflow.providers.standard.operators.empty import EmptyOperator

with DAG("small_{n}", schedule=None, tags=["memseries"]):
    EmptyOperator(task_id="extract") >> EmptyOperator(task_id="load")

_memseries_dagproc_probe.last_line(__file__)
"""


def _count_lines(path: Path) -> int:
    with path.open("rb") as f:
        return sum(1 for line in f if line.strip())


def _compile_pyc(prefix: Path) -> float:
    """Compile the stdlib and site-packages into the pycache prefix (once per prefix); returns seconds spent."""
    stamp = prefix / ".compiled"
    if stamp.exists():
        return 0.0
    prefix.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPYCACHEPREFIX": str(prefix)}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    t0 = time.monotonic()
    dirs = {sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", "-j", "2", *sorted(dirs)],
        env=env,
        capture_output=True,
        check=False,
    )
    stamp.touch()
    return time.monotonic() - t0


def _stop(proc: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=20)
            return
        except subprocess.TimeoutExpired:
            continue


def _present_pfns(pid: int) -> set[int] | None:
    """
    The physical frames (PFNs) of every page ``pid`` has present in RAM, from /proc/PID/pagemap; None if the
    kernel hides PFNs from us (they read as 0 without CAP_SYS_ADMIN).

    psutil has no way to say how much RAM two processes use *together*: USS leaves out every page they
    share with anyone, PSS splits shared pages among all their sharers (here also the live parse
    processes, which come and go). The number of distinct frames over the manager and its zygote is exact.
    """
    frames: set[int] = set()
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/pagemap", "rb") as pagemap:
        for line in maps:
            lo, hi = (int(x, 16) for x in line.split(None, 1)[0].split("-"))
            if lo >= 1 << 47:  # [vsyscall]
                continue
            pagemap.seek(lo // 4096 * 8)
            data = pagemap.read((hi - lo) // 4096 * 8)
            for entry in memoryview(data).cast("Q"):
                if entry >> 63:  # present
                    frames.add(entry & ((1 << 55) - 1))
    if frames and frames <= {0}:
        return None
    return frames


def _manager_zygote_ram(manager_pid: int) -> int | None:
    """Bytes of RAM the manager and its zygote(s) use together (distinct frames), None if not measurable."""
    import psutil

    try:
        manager = psutil.Process(manager_pid)
        pids = [manager_pid] + [
            c.pid
            for c in manager.children()
            if "parse zygote" in " ".join(c.cmdline())
        ]
        frames: set[int] = set()
        for pid in pids:
            pfns = _present_pfns(pid)
            if pfns is None:
                return None
            frames |= pfns
    except (OSError, psutil.Error):
        return None
    return len(frames) * 4096


def _family_uss(manager_pid: int) -> dict:
    """
    USS and PSS of the manager and of its zygote(s) (processes titled '... parse zygote'), and the PSS of the
    whole family (manager, zygotes, running parse processes): the family's real RAM. USS alone misleads in a
    forking family: a page shared with a live child is in nobody's USS.
    """
    import psutil

    out = {"manager_uss": None, "manager_pss": None, "zygote_uss": 0, "zygote_pss": 0, "zygotes": 0, "family_pss": 0}
    try:
        manager = psutil.Process(manager_pid)
        mem = manager.memory_full_info()
        out["manager_uss"], out["manager_pss"] = mem.uss, mem.pss
        out["family_pss"] = mem.pss
        for child in manager.children(recursive=True):
            try:
                cmem = child.memory_full_info()
                out["family_pss"] += cmem.pss
                if child.ppid() == manager_pid and "parse zygote" in " ".join(child.cmdline()):
                    out["zygote_uss"] += cmem.uss
                    out["zygote_pss"] += cmem.pss
                    out["zygotes"] += 1
            except psutil.Error:
                continue
    except psutil.Error:
        pass
    return out


def _serialized(env: dict) -> dict:
    code = (
        "import json\n"
        "from sqlalchemy import select\n"
        "from airflow import settings\n"
        "from airflow.models.serialized_dag import SerializedDagModel\n"
        "from airflow.models.errors import ParseImportError\n"
        "with settings.Session() as s:\n"
        "    rows = {r.dag_id: r.data for r in s.scalars(select(SerializedDagModel))}\n"
        "    errors = sorted(e.filename for e in s.scalars(select(ParseImportError)))\n"
        "print(json.dumps({'dags': rows, 'import_errors': errors}, sort_keys=True, default=str))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(lines[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mode", choices=("parse", "serialized"), default="parse")
    parser.add_argument("--dags", type=int, default=20, help="number of DAG files (20)")
    parser.add_argument("--runs", type=int, default=3, help="parses of each file (3)")
    parser.add_argument("--parallelism", type=int, default=2, help="[dag_processor] parsing_processes (2)")
    parser.add_argument("--pyc", type=Path, help="PYTHONPYCACHEPREFIX with compiled stdlib + site-packages")
    parser.add_argument("--copy-dags", type=Path, action="append", default=[], help="serialized mode: sources")
    parser.add_argument("--timeout", type=float, default=900.0, help="give up after (900 s)")
    args = parser.parse_args()

    compile_s = _compile_pyc(args.pyc) if args.pyc else 0.0
    if args.mode == "serialized":
        # The same path in every build's run: a DAG module's name is derived from its file's path
        # (`unusual_prefix_<sha1 of the path>_...`) and ends up in the serialized tasks.
        home = Path(tempfile.gettempdir()) / "memseries-bench-dagproc-serialized"
        shutil.rmtree(home, ignore_errors=True)
        home.mkdir()
    else:
        home = Path(tempfile.mkdtemp(prefix="memseries-bench-dagproc-zygote-"))
    try:
        dags = home / "dags"
        dags.mkdir()
        probe_dir = home / "probe"
        probe_dir.mkdir()
        (probe_dir / "_memseries_dagproc_probe.py").write_text(PROBE)
        (probe_dir / "sitecustomize.py").write_text(SITECUSTOMIZE)
        if args.mode == "parse":
            for n in range(args.dags):
                (dags / f"small_{n}.py").write_text(DAG.format(n=n))
        else:
            for src in args.copy_dags:
                for path in sorted(src.glob("*.py")):
                    if path.name != "__init__.py":
                        shutil.copy(path, dags / path.name)
        out = home / "parses.jsonl"
        out.touch()
        env = {
            **os.environ,
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW__DATABASE__LOAD_DEFAULT_CONNECTIONS": "False",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "0" if args.mode == "parse" else "3600",
            "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": str(args.parallelism),
            "AIRFLOW__DAG_PROCESSOR__PRINT_STATS_INTERVAL": "0",
            "AIRFLOW__DAG_PROCESSOR__DAG_FILE_PROCESSOR_TIMEOUT": "120",
            "PYTHONPATH": str(probe_dir),
            "MEMSERIES_DAGPROC_OUT": str(out),
        }
        for key in ("AIRFLOW__DAG_PROCESSOR__PRELOAD_MODULES", "AIRFLOW__DAG_PROCESSOR__PARSE_ZYGOTE"):
            env.pop(key, None)
        if args.pyc:
            env["PYTHONPYCACHEPREFIX"] = str(args.pyc)
        if args.mode == "serialized":
            # Some operators build template_fields from a set: its order follows the per-interpreter string
            # hash seed, which differs between any two dag-processor runs, patched or not. Fix it for both.
            env["PYTHONHASHSEED"] = "0"
        migrate = subprocess.run(
            [sys.executable, "-m", "airflow", "db", "migrate"], env=env, capture_output=True, text=True, check=False
        )
        if migrate.returncode != 0:
            print(migrate.stderr[-3000:], file=sys.stderr)
            return 1

        log_path = home / "dag-processor.log"
        start = time.monotonic()
        samples: list[dict] = []
        with log_path.open("w") as log_file:
            proc = subprocess.Popen(
                [sys.executable, "-m", "airflow", "dag-processor"],
                env=env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                deadline = start + args.timeout
                if args.mode == "parse":
                    expected = args.dags * args.runs
                    pages_at = 0.0
                    while time.monotonic() < deadline and proc.poll() is None:
                        parsed = _count_lines(out)
                        if parsed >= expected:
                            break
                        sample = {"t": time.time(), **_family_uss(proc.pid)}
                        # Exact RAM of manager + zygote every 2 s once a quarter of the parses are done (the
                        # zygote is up, the manager in its loop); reading pagemap costs ~50 ms.
                        if parsed >= expected // 4 and time.monotonic() - pages_at >= 2:
                            sample["manager_zygote_ram"] = _manager_zygote_ram(proc.pid)
                            pages_at = time.monotonic()
                        samples.append(sample)
                        time.sleep(0.5)
                    samples.append({"t": time.time(), **_family_uss(proc.pid)})
                else:
                    last, stable_since = None, None
                    while time.monotonic() < deadline and proc.poll() is None:
                        time.sleep(3)
                        snap = _serialized(env)
                        key = (len(snap["dags"]), len(snap["import_errors"]))
                        if key == last and key[0] > 0:
                            if time.monotonic() - stable_since >= 15:
                                break
                        else:
                            last, stable_since = key, time.monotonic()
            finally:
                _stop(proc)
        wall_s = time.monotonic() - start
        log_text = log_path.read_text(errors="replace")
        import airflow

        result: dict = {"airflow_version": airflow.__version__, "pyc": bool(args.pyc), "compile_s": compile_s}
        if args.mode == "serialized":
            result["serialized"] = _serialized(env)
            print(json.dumps(result, default=str))
            return 0
        parses = sorted(
            (json.loads(line) for line in out.read_text().splitlines() if line.strip()), key=lambda r: r["t_end"]
        )[: args.dags * args.runs]
        if len(parses) < args.dags * args.runs:
            print(log_text[-4000:], file=sys.stderr)
            print(f"{len(parses)}/{args.dags * args.runs} parses recorded", file=sys.stderr)
            if not parses:
                return 1
        result.update(
            {
                "dags": args.dags,
                "runs": args.runs,
                "parallelism": args.parallelism,
                "wall_s": wall_s,
                "parses": parses,
                "samples": samples,
                "zygote_log": [line for line in log_text.splitlines() if "Parse zygote (pid" in line][:5],
            }
        )
        print(json.dumps(result))
        return 0
    finally:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
