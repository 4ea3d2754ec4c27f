"""venv: a Python 3.11 virtual environment of a base from its pinned constraints, patched or not.

Paths: .venv/airflow-<base> (unpatched) and .venv/airflow-<base>-patched. A venv is reused while its stamp
(constraints, series and label fingerprint) still matches; otherwise it is made again.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from memseries import paths
from memseries.bases import Base, get_base
from memseries.build import DEFAULT_LABEL, build_wheel
from memseries.errors import SeriesError

HELP = "make (or reuse) a venv of a base from its constraints; patched unless --unpatched"
STAMP = ".memseries-stamp.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", required=True, help="Airflow release, e.g. 3.1.3 or 3.3.2")
    parser.add_argument("--unpatched", action="store_true", help="the plain base, for comparisons")
    parser.add_argument("--path", type=Path, help="where to make it (default .venv/airflow-<base>[-patched])")
    parser.add_argument("--label", default=DEFAULT_LABEL, help=f"local version label of the patched build ({DEFAULT_LABEL})")
    parser.add_argument("--force", action="store_true", help="make it again even if the stamp matches")


def local_version(base_version: str, label: str = DEFAULT_LABEL) -> str:
    return f"{base_version}+{label}"


def default_path(base_version: str, patched: bool) -> Path:
    return paths.VENVS / (f"airflow-{base_version}-patched" if patched else f"airflow-{base_version}")


def uv() -> str:
    beside = Path(sys.executable).parent / "uv"
    found = str(beside) if beside.exists() else shutil.which("uv")
    if not found:
        raise SeriesError("uv is not installed: `pip install uv` (or install the tools with `make tools`)")
    return found


def _uv(*args: str) -> None:
    cmd = [uv(), *args]
    if os.environ.get("MEMSERIES_OFFLINE") == "1":
        cmd.insert(2 if args[0] == "pip" else 1, "--offline")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SeriesError(f"`uv {' '.join(args[:3])} ...` failed: {proc.stderr.strip()[-2000:]}")


def _fingerprint(base: Base, patched: bool, label: str) -> dict:
    h = hashlib.sha256(base.constraints.read_bytes())
    if patched:
        h.update(label.encode())
        for p in base.series():
            h.update(p.name.encode() + b"\0" + p.read_bytes())
    return {"base": base.version, "patched": patched, "label": label if patched else None, "sha256": h.hexdigest(),
            "link_mode": "copy"}


def ensure_venv(base_version: str, patched: bool = True, path: Path | None = None, label: str = DEFAULT_LABEL,
                force: bool = False) -> Path:
    base = get_base(base_version)
    if patched and not base.patched:
        raise SeriesError(f"base {base.version} has no series to patch with: use --unpatched")
    path = (path or default_path(base.version, patched)).absolute()
    stamp = path / STAMP
    want = _fingerprint(base, patched, label)
    if not force and stamp.is_file() and json.loads(stamp.read_text()) == want and (path / "bin" / "python").exists():
        return path
    if path.exists():
        shutil.rmtree(path)
    python = str(path / "bin" / "python")
    try:
        _uv("venv", "-q", "--python", "3.11", str(path))
        # Copies, not uv's default hard links into its cache: a file edited in one venv must never change the
        # same file in every other venv (the unpatched base included) and in the cache.
        _uv("pip", "install", "-q", "--link-mode=copy", "--python", python, "-r", str(base.constraints))
        if patched:
            wheel = build_wheel(base.version, label)
            _uv("pip", "install", "-q", "--link-mode=copy", "--python", python, "--no-deps", "--reinstall", str(wheel))
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)  # never leave a half-made venv that looks usable
        raise
    stamp.write_text(json.dumps(want, indent=1))
    return path


def run(args) -> int:
    path = ensure_venv(args.base, not args.unpatched, args.path, args.label, args.force)
    print(path)
    return 0
