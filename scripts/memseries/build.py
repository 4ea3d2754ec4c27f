"""build: the patched apache-airflow-core wheel of a base, as a PEP 440 local version (3.1.3+memfix)."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from memseries import paths
from memseries.apply import apply_to_unpacked
from memseries.bases import get_base
from memseries.errors import SeriesError
from memseries.fetch import base_wheel

HELP = "build dist/apache_airflow_core-<base>+<label>-py3-none-any.whl from the pinned wheel and the series"
DEFAULT_LABEL = "memfix"
LABEL = re.compile(r"^[a-z0-9]+(?:\.[a-z0-9]+)*$")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", required=True, help="Airflow release to patch, e.g. 3.1.3")
    parser.add_argument("--label", default=DEFAULT_LABEL, help=f"PEP 440 local version label (default {DEFAULT_LABEL})")
    parser.add_argument("--dist", type=Path, default=paths.DIST, help="output directory (default dist/)")


def _wheel_cli(*args: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "wheel", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SeriesError(f"`wheel {' '.join(args)}` failed: {proc.stderr.strip()[-1000:]}")


def _set_version(root: Path, old: str, new: str) -> None:
    """Rename the dist-info, and make METADATA and airflow.__version__ say the local version."""
    info = root / f"apache_airflow_core-{old}.dist-info"
    metadata = info / "METADATA"
    text = metadata.read_text()
    text, n = re.subn(rf"^Version: {re.escape(old)}$", f"Version: {new}", text, count=1, flags=re.M)
    if n != 1:
        raise SeriesError(f"{metadata}: no 'Version: {old}' line")
    metadata.write_text(text)
    info.rename(root / f"apache_airflow_core-{new}.dist-info")
    init = root / "airflow" / "__init__.py"
    text, n = re.subn(rf'^__version__ = "{re.escape(old)}"$', f'__version__ = "{new}"', init.read_text(), count=1,
                      flags=re.M)
    if n != 1:
        raise SeriesError(f"{init}: no __version__ = \"{old}\" line")
    init.write_text(text)


def build_wheel(base_version: str, label: str = DEFAULT_LABEL, dist: Path = paths.DIST) -> Path:
    if not LABEL.match(label):
        raise SeriesError(f"label {label!r} is not a PEP 440 local version label (lowercase letters, digits, dots)")
    base = get_base(base_version)
    wheel = base_wheel(base)
    local = f"{base.version}+{label}"
    with tempfile.TemporaryDirectory(prefix="memseries-build-") as tmp:
        _wheel_cli("unpack", str(wheel), "-d", tmp)
        root = Path(tmp) / f"apache_airflow_core-{base.version}"
        apply_to_unpacked(base.version, root)
        _set_version(root, base.version, local)
        dist.mkdir(parents=True, exist_ok=True)
        out = dist / f"apache_airflow_core-{local}-py3-none-any.whl"
        out.unlink(missing_ok=True)
        _wheel_cli("pack", str(root), "-d", str(dist))
    if not out.is_file():
        raise SeriesError(f"wheel pack did not produce {out}")
    return out


def run(args) -> int:
    print(build_wheel(args.base, args.label, args.dist))
    return 0
