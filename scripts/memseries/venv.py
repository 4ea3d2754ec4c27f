"""venv: a virtual environment of a base from its pinned constraints, patched or not, on Python 3.11 (default),
3.12 or 3.13.

Paths: .venv/airflow-<base>[-patched][-py3.13]. A venv is reused while its stamp (constraints, series, label and
Python fingerprint) still matches. Otherwise the new one is built beside it (`<path>.new`, relocatable) and
swapped in only once it is complete: a working venv is never deleted before its replacement exists.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from memseries import paths
from memseries.bases import DEFAULT_BASE, Base, get_base
from memseries.build import DEFAULT_LABEL, build_all
from memseries.errors import SeriesError
from memseries.fetch import offline

HELP = "make (or reuse) a venv of a base from its constraints; patched unless --unpatched"
STAMP = ".memseries-stamp.json"
DEFAULT_PYTHON = "3.11"
PYTHONS = ("3.11", "3.12", "3.13")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", default=DEFAULT_BASE, help=f"Airflow release (default {DEFAULT_BASE})")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--unpatched", action="store_true", help="the plain base, for comparisons")
    which.add_argument("--both", action="store_true", help="the unpatched venv, and the patched one if the base patches anything")
    parser.add_argument("--python", default=DEFAULT_PYTHON, choices=PYTHONS, help=f"Python version (default {DEFAULT_PYTHON})")
    parser.add_argument("--path", type=Path, help="where to make it (default .venv/airflow-<base>[-patched][-py<X.Y>])")
    parser.add_argument("--label", default=DEFAULT_LABEL, help=f"local version label of the patched build ({DEFAULT_LABEL})")
    parser.add_argument("--force", action="store_true", help="make it again even if the stamp matches")


def local_version(base_version: str, label: str = DEFAULT_LABEL) -> str:
    return f"{base_version}+{label}"


def default_path(base_version: str, patched: bool, python: str = DEFAULT_PYTHON) -> Path:
    name = f"airflow-{base_version}" + ("-patched" if patched else "")
    return paths.VENVS / (name if python == DEFAULT_PYTHON else f"{name}-py{python}")


def uv() -> str:
    beside = Path(sys.executable).parent / "uv"
    found = str(beside) if beside.exists() else shutil.which("uv")
    if not found:
        raise SeriesError("uv is not installed: `pip install uv` (or install the tools with `make tools`)")
    return found


def find_python(version: str) -> str:
    """An interpreter of that version already on this machine (PATH, then pyenv): uv must not download one."""
    for candidate in (shutil.which(f"python{version}"),
                      *sorted(glob.glob(str(Path.home() / f".pyenv/versions/{version}.*/bin/python{version}")))):
        if candidate and subprocess.run([candidate, "-c", "pass"], capture_output=True).returncode == 0:
            return candidate
    raise SeriesError(f"no Python {version} found (looked for python{version} on PATH and in ~/.pyenv/versions)")


def _uv(*args: str) -> None:
    cmd = [uv(), *args]
    if offline():
        cmd.insert(2 if args[0] == "pip" else 1, "--offline")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SeriesError(f"`uv {' '.join(args[:3])} ...` failed: {proc.stderr.strip()[-2000:]}")


def _fingerprint(base: Base, patched: bool, label: str, python: str) -> dict:
    h = hashlib.sha256(base.constraints_for(python).read_bytes())
    if patched:
        h.update(label.encode())
        for s in base.series:
            for p in s.patch_files():
                h.update(s.dist.name.encode() + b"\0" + p.name.encode() + b"\0" + p.read_bytes())
    return {"base": base.version, "patched": patched, "label": label if patched else None, "sha256": h.hexdigest(),
            "python": python, "link_mode": "copy", "relocatable": True}


def _swap_in(new: Path, path: Path) -> None:
    """Replace `path` by the complete venv `new`; the old one is removed only after the rename."""
    old = None
    if path.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
        path.rename(old / "venv")
    new.rename(path)
    if old:
        shutil.rmtree(old, ignore_errors=True)


def ensure_venv(base: Base | str, patched: bool = True, path: Path | None = None, label: str = DEFAULT_LABEL,
                force: bool = False, python: str = DEFAULT_PYTHON) -> Path:
    if isinstance(base, str):  # benchmark modules may still pass a version: resolve it here, once
        base = get_base(base)
    if patched and not base.patched:
        raise SeriesError(f"base {base.version} has no series to patch with: use --unpatched")
    path = (path or default_path(base.version, patched, python)).absolute()
    stamp = path / STAMP
    want = _fingerprint(base, patched, label, python)
    if not force and stamp.is_file() and json.loads(stamp.read_text()) == want and (path / "bin" / "python").exists():
        return path
    interpreter = find_python(python)
    wheels = build_all(base, label) if patched else []  # a series that does not build fails before any venv work
    path.parent.mkdir(parents=True, exist_ok=True)
    new = path.with_name(f"{path.name}.new")
    shutil.rmtree(new, ignore_errors=True)  # a leftover of an interrupted build, never a working venv
    py = str(new / "bin" / "python")
    try:
        # Relocatable, so that the venv keeps working once renamed from <path>.new to <path>.
        _uv("venv", "-q", "--relocatable", "--python", interpreter, str(new))
        # Copies, not uv's default hard links into its cache: a file edited in one venv must never change the
        # same file in every other venv (the unpatched base included) and in the cache.
        _uv("pip", "install", "-q", "--link-mode=copy", "--python", py, "-r", str(base.constraints_for(python)))
        if wheels:
            _uv("pip", "install", "-q", "--link-mode=copy", "--python", py, "--no-deps", "--reinstall",
                *map(str, wheels))
        (new / STAMP).write_text(json.dumps(want, indent=1))
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)  # the working venv at `path`, if any, is untouched
        raise
    _swap_in(new, path)
    return path


def venv_python(base: Base, patched: bool, python: str = DEFAULT_PYTHON) -> Path:
    return ensure_venv(base, patched=patched, python=python) / "bin" / "python"


def run(args) -> int:
    base = get_base(args.base)
    if args.both:
        if args.path:
            raise SeriesError("--both makes two venvs: it takes no --path")
        wanted = [False, True] if base.patched else [False]
    else:
        wanted = [not args.unpatched]
    for patched in wanted:
        print(ensure_venv(base, patched, args.path, args.label, args.force, args.python))
    return 0
