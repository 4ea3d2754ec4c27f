"""workspace: a git checkout of a base's pristine sources (upstream paths) with its series applied as commits.

Every distribution the base patches is there at its repository path (airflow-core/src/..., providers/celery/
src/...), core's series first, then the others. The way to write or restack a patch: edit and commit there, then
`memseries refresh` writes the patch files back, each commit to the series of the distribution it changes.
"""

from __future__ import annotations

import argparse
import subprocess
import zipfile
from pathlib import Path

from memseries.bases import DEFAULT_BASE, Base, get_base
from memseries.errors import SeriesError
from memseries.fetch import dist_wheel

HELP = "make a git workspace of a base's pristine sources (tag `base`) with its series applied as commits"
IDENTITY = ["-c", "user.name=memseries", "-c", "user.email=memseries@localhost"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", default=DEFAULT_BASE, help=f"Airflow release (default {DEFAULT_BASE})")
    parser.add_argument("--upto", type=int, help="apply only the first N patches (core's series first)")
    parser.add_argument("dir", type=Path, help="a directory that does not exist yet")


def git(repo: Path, *args: str) -> str:
    proc = subprocess.run(["git", *IDENTITY, "-C", str(repo), *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SeriesError(f"`git {' '.join(args[:2])}` in {repo} failed: {proc.stderr.strip()[-1000:]}")
    return proc.stdout


def workspace_series(base: Base):
    """Core (patched or not) first, then every other series the base patches."""
    return [base.core] + [s for s in base.series if s != base.core]


def make_workspace(base: Base, target: Path, upto: int | None = None) -> Path:
    if target.exists():
        raise SeriesError(f"{target} already exists")
    names = []
    for s in workspace_series(base):
        package = s.dist.package + "/"
        with zipfile.ZipFile(dist_wheel(base, s.dist)) as zf:
            for name in zf.namelist():
                if name.startswith(package) and not name.endswith("/"):
                    dest = target / s.dist.src_prefix / name
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    dest.write_bytes(zf.read(name))
        names.append(f"{s.dist.name} {base.pinned_version(s.dist.name)}")
    git(target, "init", "-q")
    git(target, "add", "-A")
    git(target, "commit", "-q", "-m", f"pristine wheel sources: {', '.join(names)}")
    git(target, "tag", "base")
    patches = [p for s in workspace_series(base) if s.patched for p in s.patch_files()]
    for p in patches[:upto]:
        git(target, "am", "-q", "-3", "--keep-cr", str(p))  # -3: restacking after an earlier patch moved lines
    return target


def run(args) -> int:
    print(make_workspace(get_base(args.base), args.dir, args.upto))
    return 0
