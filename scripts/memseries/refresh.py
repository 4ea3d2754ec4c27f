"""refresh: write the commits after `base` in a workspace back as the base's series (names kept by position)."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from memseries.bases import get_base
from memseries.workspace import git

HELP = "write a workspace's commits (base..HEAD) back as the base's patch files and series"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", required=True, help="Airflow release, e.g. 3.1.3")
    parser.add_argument("dir", type=Path, help="a workspace made by `memseries workspace`")


def run(args) -> int:
    base = get_base(args.base)
    old = base.series() if base.patched else []
    with tempfile.TemporaryDirectory() as tmp:
        git(args.dir, "format-patch", "-q", "--no-stat", "--no-signature", "--zero-commit", "-N", "-o", tmp, "base..HEAD")
        produced = sorted(Path(tmp).glob("*.patch"))
        names = [old[i].name if i < len(old) else p.name for i, p in enumerate(produced)]
        for p in old:
            p.unlink()
        for p, name in zip(produced, names):
            (base.dir / name).write_bytes(p.read_bytes())
    base.series_file.write_text("".join(n + "\n" for n in names))
    for n in names:
        print(f"wrote {base.dir / n}")
    return 0
