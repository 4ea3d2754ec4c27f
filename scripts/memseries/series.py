"""A base's series: its patches in order, their metadata rules, and the base sources they apply to."""

from __future__ import annotations

import re
import zipfile
from collections.abc import Callable
from pathlib import Path

from memseries import paths
from memseries.applier import apply_series
from memseries.bases import Base
from memseries.fetch import base_wheel
from memseries.patchfile import Patch, read_patch

REQUIRED_TRAILERS = ("Upstream-PR", "Bug", "Applied-Upstream", "Forwarded")
FORWARDED_VALUES = {"yes", "no", "not-needed"}
NEWSFRAGMENT = re.compile(r"^newsfragments/(\d+)\.(significant|feature|improvement|bugfix|doc|misc)\.rst$")
VERSION = re.compile(r"^\d+\.\d+\.\d+$")


def load(base: Base) -> list[Patch]:
    return [read_patch(p) for p in base.series()]


def test_modules(patch: Patch) -> list[str]:
    return patch.trailers.get("Tests", [])


def base_test_modules(base: Base) -> list[str]:
    """Every test module the base's series lists in `Tests:` trailers, in series order, each once.

    The test tree (airflow-core/tests/) is shared by every base; a base runs only these modules. A base without a
    series has none.
    """
    if not base.patched:
        return []
    modules: list[str] = []
    for patch in load(base):
        for module in test_modules(patch):
            if module not in modules:
                modules.append(module)
    return modules


def newsfragment(patch: Patch) -> str | None:
    values = patch.trailers.get("Newsfragment", [])
    return values[0] if values else None


def metadata_problems(patch: Patch) -> list[str]:
    """Everything wrong with a patch's header, each as one line naming the patch."""
    problems = []
    for key in REQUIRED_TRAILERS:
        if not patch.trailers.get(key):
            problems.append(f"{patch.name}: missing trailer {key}:")
    applied = (patch.trailers.get("Applied-Upstream") or [""])[0]
    if applied and applied != "no" and not VERSION.match(applied):
        problems.append(f"{patch.name}: Applied-Upstream must be a release (e.g. 3.2.0) or 'no', not {applied!r}")
    forwarded = (patch.trailers.get("Forwarded") or [""])[0]
    if forwarded and forwarded not in FORWARDED_VALUES:
        problems.append(f"{patch.name}: Forwarded must be one of {sorted(FORWARDED_VALUES)}, not {forwarded!r}")
    fragment = newsfragment(patch)
    if not fragment:
        problems.append(f"{patch.name}: missing trailer Newsfragment: (newsfragments/<number>.<type>.rst)")
    elif not NEWSFRAGMENT.match(fragment):
        problems.append(f"{patch.name}: newsfragment {fragment} is not newsfragments/<number>.<type>.rst")
    elif not (paths.REPO / fragment).is_file():
        problems.append(f"{patch.name}: newsfragment {fragment} does not exist")
    tests = test_modules(patch)
    if not tests:
        problems.append(f"{patch.name}: missing trailer Tests: (the patch's test modules)")
    for t in tests:
        if not t.startswith("airflow-core/tests/") or not (paths.REPO / t).is_file():
            problems.append(f"{patch.name}: test module {t} does not exist under airflow-core/tests/")
    if not any(f.path.startswith("airflow-core/src/") for f in patch.files):
        problems.append(f"{patch.name}: changes no file under airflow-core/src/")
    return problems


def wheel_reader(wheel: Path) -> Callable[[str], str | None]:
    zf = zipfile.ZipFile(wheel)
    names = set(zf.namelist())

    def read(rel: str) -> str | None:
        if rel not in names:
            return None
        return zf.read(rel).decode("utf-8", errors="surrogateescape")

    return read


def apply_to_pristine(base: Base, patches: list[Patch]) -> dict[str, str | None]:
    """Apply in memory to the base wheel's sources; raises SeriesError naming patch, file and hunk."""
    return apply_series(patches, wheel_reader(base_wheel(base)))
