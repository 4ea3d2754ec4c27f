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


def write_atomic(path: Path, data: bytes) -> None:
    """Write beside `path` and rename at the end: `path` is either its old content or all of `data`."""
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def read_utf8(path: Path, what: str = "") -> str:
    """A text file that must be UTF-8; otherwise one clear error naming the file and the line."""
    from memseries.errors import SeriesError

    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise SeriesError(
            f"{what or path.name}: line {line} is not UTF-8 (byte 0x{data[exc.start]:02x}): patches, tests and "
            "newsfragments must be UTF-8"
        ) from None
