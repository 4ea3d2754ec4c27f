"""refresh: write the commits after `base` in a workspace back as the base's series.

Each commit goes to the series of the distribution whose files it changes (one distribution per commit); within
a series, patch file names are kept by position.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from memseries.bases import DEFAULT_BASE, Series, get_base
from memseries.errors import SeriesError
from memseries.patchfile import read_patch
from memseries.workspace import git, workspace_series

HELP = "write a workspace's commits (base..HEAD) back as the patch files and series of the base's distributions"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", default=DEFAULT_BASE, help=f"Airflow release (default {DEFAULT_BASE})")
    parser.add_argument("dir", type=Path, help="a workspace made by `memseries workspace`")


def _owner(files: list[str], candidates: list[Series], name: str) -> Series:
    owners = {s for s in candidates for f in files if f.startswith(s.dist.root + "/")}
    if len(owners) != 1:
        which = ", ".join(sorted(s.dist.name for s in owners)) or "no patched distribution"
        raise SeriesError(f"commit {name} changes {which}: one commit must change exactly one distribution")
    return owners.pop()


def run(args) -> int:
    base = get_base(args.base)
    candidates = workspace_series(base)
    with tempfile.TemporaryDirectory() as tmp:
        git(args.dir, "format-patch", "-q", "--no-stat", "--no-signature", "--zero-commit", "-N", "-o", tmp, "base..HEAD")
        produced: dict[Series, list[Path]] = {s: [] for s in candidates}
        for p in sorted(Path(tmp).glob("*.patch")):
            produced[_owner(read_patch(p).files, candidates, p.name)].append(p)
        for s, new in produced.items():
            if not new and not s.patched:
                continue
            old = s.patch_files() if s.patched else []
            # format-patch numbers across all series: a new patch takes its position within its own series
            names = [old[i].name if i < len(old) else f"{i + 1:04d}-{p.name[5:]}" for i, p in enumerate(new)]
            for p in old:
                p.unlink()
            s.dir.mkdir(parents=True, exist_ok=True)
            for p, name in zip(new, names):
                (s.dir / name).write_bytes(p.read_bytes())
                print(f"wrote {s.dir / name}")
            s.series_file.write_text("".join(n + "\n" for n in names))
    return 0
