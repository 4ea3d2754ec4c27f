"""Where things live: the checkout, the per-base directories, caches and outputs."""

from __future__ import annotations

import os
from pathlib import Path

# MEMSERIES_REPO points the tool at another tree of the same shape (the tooling tests use throw-away trees).
REPO = Path(os.environ.get("MEMSERIES_REPO") or Path(__file__).resolve().parents[2]).resolve()
PATCHES = REPO / "airflow-core" / "patches"
CORE_TESTS = REPO / "airflow-core" / "tests"
NEWSFRAGMENTS = REPO / "newsfragments"
DIST = REPO / "dist"
VENVS = REPO / ".venv"
BENCH_RESULTS = REPO / "bench-results"


def cache_dir() -> Path:
    """Downloads survive fresh clones on the same machine: they live outside the checkout by default."""
    return Path(os.environ.get("MEMSERIES_CACHE_DIR", Path.home() / ".cache" / "memseries"))
