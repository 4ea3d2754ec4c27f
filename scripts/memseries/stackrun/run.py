"""One run of the real stack for `memseries demo` / `bench soak`: which builds, then start, sample, count, stop."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import re
import time
from pathlib import Path

from memseries.bases import DEFAULT_BASE
from memseries.stack import EXAMPLE_DAGS, Sample, Stack, StackConfig, StackError, tail
from memseries.stack.procs import peak_rss
from memseries.stackrun import conf_spike


@dataclasses.dataclass
class DemoBuild:
    label: str
    venv: Path
    patched: bool


def parse_duration(text: str) -> float:
    """'90', '90s', '3m', '1h30m' -> seconds."""
    text = str(text).strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    total, pos = 0.0, 0
    for m in re.finditer(r"(\d+(?:\.\d+)?)\s*([hms])", text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * {"h": 3600, "m": 60, "s": 1}[m.group(2)]
        pos = m.end()
    if pos != len(text) or total <= 0:
        raise argparse.ArgumentTypeError(f"bad duration {text!r} (examples: 180, 90s, 3m, 1h)")
    return total


def resolve_builds(args, log) -> list[DemoBuild]:
    """Unpatched base, patched base, and with --upstream the upstream reference (3.3.2) when it is not the base.

    The base is resolved once here; --unpatched-venv/--patched-venv/--upstream-venv replace a built venv."""
    from memseries.bases import UPSTREAM, get_base
    from memseries.venv import ensure_venv

    base = get_base(getattr(args, "base", None) or DEFAULT_BASE)
    wanted = [(base, base.version, False, "unpatched_venv"), (base, f"{base.version}+memfix", True, "patched_venv")]
    if getattr(args, "upstream", False) and base.version != UPSTREAM:
        wanted.append((get_base(UPSTREAM), UPSTREAM, False, "upstream_venv"))
    builds = []
    for b, label, patched, override in wanted:
        venv = getattr(args, override, None)
        builds.append(DemoBuild(label, Path(venv) if venv else ensure_venv(b, patched=patched), patched))
        log(f"{label}: {builds[-1].venv}")
    return builds

@dataclasses.dataclass
class RunResult:
    build: DemoBuild
    duration: float
    samples: list[Sample]
    counts: dict[str, int]
    gc_times: dict[str, list[float]]  # role -> durations of forced full collections
    error: str | None = None
    warmup: float = 0.0  # seconds after start when the first task run succeeded
    age: float = 0.0  # seconds between forced collections in forked children
    fork_uss: dict[int, int] = dataclasses.field(default_factory=dict)  # pid -> USS right after its fork
    failed_tasks: list[tuple] = dataclasses.field(default_factory=list)  # (dag_id, task_id, count)
    log_tails: dict[str, str] = dataclasses.field(default_factory=dict)  # component -> last lines of its log
    scheduler_peak_rss: int = 0  # bytes, the scheduler's VmHWM just before it was stopped
    conf_run: str = "-"  # the big-conf run (conf_spike): state and TIs, or "-" without that DAG


def run_stack(build: DemoBuild, args, progress=None, log=print) -> RunResult:
    config = {("dag_processor", "preload_modules"): "numpy"}  # read by the patched dag-processor only
    cfg = StackConfig(
        venv=build.venv,
        label=build.label,
        backend=args.backend,
        parallelism=args.parallelism,
        dags=[EXAMPLE_DAGS],
        age_interval=args.age,
        config=config,
    )
    stack = Stack(cfg, log=lambda m: None)
    samples: list[Sample] = []
    counts: dict[str, int] = {}
    gc_times: dict[str, list[float]] = {}
    fork_uss: dict[int, int] = {}
    failed: list[tuple] = []
    log_tails: dict[str, str] = {}
    error = None
    warmup = 0.0
    peak, conf_run = 0, "-"
    task = progress.add_task(f"{build.label}: starting", total=args.duration) if progress else None
    try:
        with stack:
            sampler = stack.start_sampler(interval=args.sample_interval)
            end = time.monotonic() + args.duration
            roles_by_pid: dict[int, str] = {}
            spike = "pending" if conf_spike.present(stack) else "absent"
            while True:
                now = time.monotonic()
                stack.check_alive()
                if spike == "pending" and now - stack.t0 >= conf_spike.TRIGGER_AFTER:
                    with contextlib.suppress(Exception):  # not serialized yet, or a locked SQLite: next tick
                        if conf_spike.trigger(stack):
                            spike = "triggered"
                with contextlib.suppress(Exception):  # a locked SQLite read is retried next tick
                    counts = stack.task_counts()
                if not warmup and counts.get("success"):
                    warmup = now - stack.t0
                if progress is not None:
                    progress.update(
                        task,
                        completed=min(args.duration, args.duration - (end - now)),
                        description=(
                            f"{build.label}: {counts.get('success', 0)} ok / {counts.get('failed', 0)} failed, "
                            f"{len(stack.workers())} workers"
                        ),
                    )
                if now >= end:
                    break
                time.sleep(min(5.0, max(0.2, end - now)))
            for s in sampler.snapshot():
                roles_by_pid[s.pid] = s.role
            counts = stack.task_counts()
            for pid, entries in stack.collection_log().items():
                role = roles_by_pid.get(pid, "other")
                gc_times.setdefault(role, []).extend(d for _, d in entries)
            sampler.stop()
            samples = sampler.snapshot()
            fork_uss = stack.fork_uss()
            failed = [
                tuple(r)
                for r in stack.query(
                    "SELECT dag_id, task_id, count(*) FROM task_instance WHERE state IN ('failed', 'upstream_failed') "
                    "GROUP BY dag_id, task_id"
                )
            ]
            for name, path in stack.logfiles.items():
                log_tails[name] = tail(path, 300)
            if "scheduler" in stack.procs:
                peak = peak_rss(stack.procs["scheduler"].pid) or 0
            if spike != "absent":
                conf_run = conf_spike.run_state(stack)
    except StackError as e:
        error = str(e)
        log(f"[red]{build.label}: {e}[/red]" if progress else f"{build.label}: {e}")
        for name, path in stack.logfiles.items():
            log_tails.setdefault(name, tail(path, 300))
    finally:
        if progress is not None and task is not None:
            progress.update(task, completed=args.duration)
    return RunResult(
        build,
        args.duration,
        samples,
        counts,
        gc_times,
        error,
        warmup,
        args.age or 0.0,
        fork_uss,
        failed,
        log_tails,
        peak,
        conf_run,
    )
