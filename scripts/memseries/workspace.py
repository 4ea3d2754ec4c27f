"""workspace: a git checkout of a base's pristine sources (upstream paths) with its series applied as commits.

The way to write or restack a patch: edit and commit there, then `memseries refresh` writes the patch files.
"""

from __future__ import annotations

import argparse
import subprocess
import zipfile
from pathlib import Path

from memseries.bases import get_base
from memseries.errors import SeriesError
from memseries.fetch import base_wheel

HELP = "make a git workspace of a base's pristine sources (tag `base`) with the series applied as commits"
IDENTITY = ["-c", "user.name=memseries", "-c", "user.email=memseries@localhost"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", required=True, help="Airflow release, e.g. 3.1.3")
    parser.add_argument("--upto", type=int, help="apply only the first N patches of the series")
    parser.add_argument("dir", type=Path, help="a directory that does not exist yet")


def git(repo: Path, *args: str) -> str:
    proc = subprocess.run(["git", *IDENTITY, "-C", str(repo), *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SeriesError(f"`git {' '.join(args[:2])}` in {repo} failed: {proc.stderr.strip()[-1000:]}")
    return proc.stdout


def make_workspace(base_version: str, target: Path, upto: int | None = None) -> Path:
    base = get_base(base_version)
    if target.exists():
        raise SeriesError(f"{target} already exists")
    with zipfile.ZipFile(base_wheel(base)) as zf:
        for name in zf.namelist():
            if name.startswith("airflow/") and not name.endswith("/"):
                dest = target / "airflow-core" / "src" / name
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(zf.read(name))
    git(target, "init", "-q")
    git(target, "add", "-A")
    git(target, "commit", "-q", "-m", f"apache-airflow-core {base.version} (pristine wheel sources)")
    git(target, "tag", "base")
    patches = base.series() if base.patched else []
    for p in patches[:upto]:
        git(target, "am", "-q", "-3", "--keep-cr", str(p))  # -3: restacking after an earlier patch moved lines
    return target


def run(args) -> int:
    print(make_workspace(args.base, args.dir, args.upto))
    return 0
