"""apply: apply a base's series to an unpacked apache-airflow-core wheel, all or nothing."""

from __future__ import annotations

import argparse
from pathlib import Path

from memseries import series
from memseries.gitapply import apply_series, read_from_dir, write_to_dir
from memseries.bases import get_base
from memseries.errors import SeriesError

HELP = "apply a base's series to an unpacked apache-airflow-core wheel directory (exactly, all or nothing)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", required=True, help="Airflow release the directory was unpacked from, e.g. 3.1.3")
    parser.add_argument("dir", type=Path, help="an unpacked wheel: the directory that holds airflow/ and *.dist-info")


def unpacked_version(root: Path) -> str:
    infos = sorted(root.glob("apache_airflow_core-*.dist-info"))
    if not (root / "airflow" / "__init__.py").is_file() or len(infos) != 1:
        raise SeriesError(f"{root} is not an unpacked apache-airflow-core wheel (no airflow/ and one dist-info)")
    return infos[0].name[len("apache_airflow_core-"): -len(".dist-info")]


def apply_to_unpacked(base_version: str, root: Path) -> dict[str, bytes | None]:
    base = get_base(base_version)
    found = unpacked_version(root)
    if found != base.version:
        raise SeriesError(f"{root} holds apache-airflow-core {found}, not base {base.version}")
    changed = apply_series(series.load(base), read_from_dir(root), series.SRC_PREFIX, series.NOT_INSTALLED)
    write_to_dir(root, changed)
    return changed


def run(args) -> int:
    changed = apply_to_unpacked(args.base, args.dir)
    for rel in sorted(changed):
        print(f"patched {rel}")
    return 0
