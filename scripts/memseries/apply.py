"""apply: apply a base's series to an unpacked wheel of one of its distributions, all or nothing."""

from __future__ import annotations

import argparse
from pathlib import Path

from memseries import series
from memseries.bases import DEFAULT_BASE, Base, Series, get_base
from memseries.errors import SeriesError
from memseries.gitapply import apply_series, read_from_dir, write_to_dir

HELP = "apply a base's series to an unpacked wheel directory (apache-airflow-core or a patched provider; exactly, all or nothing)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", default=DEFAULT_BASE, help=f"Airflow release the wheel belongs to (default {DEFAULT_BASE})")
    parser.add_argument("dir", type=Path, help="an unpacked wheel: the directory that holds airflow/ and *.dist-info")


def unpacked(root: Path) -> tuple[str, str]:
    """(wheel stem, version) of an unpacked wheel directory."""
    infos = sorted(root.glob("*.dist-info"))
    if not (root / "airflow").is_dir() or len(infos) != 1:
        raise SeriesError(f"{root} is not an unpacked Airflow wheel (no airflow/ and one dist-info)")
    stem, _, version = infos[0].name[: -len(".dist-info")].partition("-")
    return stem, version


def series_for(base: Base, stem: str) -> Series:
    for s in base.series:
        if s.dist.wheel_stem == stem:
            return s
    raise SeriesError(f"base {base.version} patches no distribution {stem} "
                      f"(it patches: {', '.join(s.dist.name for s in base.series) or 'nothing'})")


def apply_to_unpacked(base: Base, root: Path, s: Series | None = None) -> dict[str, bytes | None]:
    stem, found = unpacked(root)
    s = s or series_for(base, stem)
    want = base.pinned_version(s.dist.name)
    if stem != s.dist.wheel_stem or found != want:
        raise SeriesError(f"{root} holds {stem.replace('_', '-')} {found}, not {s.dist.name} {want} of base {base.version}")
    changed = apply_series(series.load(s), read_from_dir(root), s.dist.src_prefix, s.dist.not_installed)
    write_to_dir(root, changed)
    return changed


def run(args) -> int:
    changed = apply_to_unpacked(get_base(args.base), args.dir)
    for rel in sorted(changed):
        print(f"patched {rel}")
    return 0
