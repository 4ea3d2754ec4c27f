"""A series' patches in order, their metadata rules, and the pristine sources they apply to."""

from __future__ import annotations

import re
import zipfile
from collections.abc import Callable
from pathlib import Path

from memseries import paths
from memseries.bases import Base, Series
from memseries.fetch import dist_wheel
from memseries.gitapply import apply_series
from memseries.patchfile import Patch, read_patch

REQUIRED_TRAILERS = ("Upstream-PR", "Bug", "Applied-Upstream", "Forwarded")
FORWARDED_VALUES = {"yes", "no", "not-needed"}
FRAGMENT_TYPES = "significant|feature|improvement|bugfix|doc|misc"
VERSION = re.compile(r"^\d+\.\d+\.\d+$")


def load(s: Series) -> list[Patch]:
    return [read_patch(p) for p in s.patch_files()]


def test_modules(patch: Patch) -> list[str]:
    return patch.trailers.get("Tests", [])


def newsfragment(patch: Patch) -> str | None:
    values = patch.trailers.get("Newsfragment", [])
    return values[0] if values else None


def base_test_modules(base: Base) -> list[tuple[Series, list[str]]]:
    """Per patched series of the base, every test module its `Tests:` trailers list, in order, each once.

    The test trees (airflow-core/tests/, providers/<name>/tests/) are shared by every base; a base runs only
    these modules.
    """
    out = []
    for s in base.series:
        modules: list[str] = []
        for patch in load(s):
            modules += [m for m in test_modules(patch) if m not in modules]
        out.append((s, modules))
    return out


def metadata_problems(patch: Patch, s: Series) -> list[str]:
    """Everything wrong with a patch's header, each as one line naming the patch."""
    dist = s.dist
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
    # towncrier's names: <number>.<type>.rst, <number>.<type>.<counter>.rst (a second fragment of one number and
    # type), and the orphan +<slug>.<type>.rst for a change with no upstream issue or PR to number it
    pattern = re.compile(rf"^{re.escape(dist.newsfragments)}(\d+|\+[a-z0-9][a-z0-9-]*)\.({FRAGMENT_TYPES})(\.\d+)?\.rst$")
    form = f"{dist.newsfragments}<number>.<type>[.<counter>].rst or +<slug>.<type>.rst"
    if not fragment:
        problems.append(f"{patch.name}: missing trailer Newsfragment: ({form})")
    elif not pattern.match(fragment):
        problems.append(f"{patch.name}: newsfragment {fragment} is not {form}")
    elif not (paths.REPO / fragment).is_file():
        problems.append(f"{patch.name}: newsfragment {fragment} does not exist")
    tests = test_modules(patch)
    if not tests:
        problems.append(f"{patch.name}: missing trailer Tests: (the patch's test modules)")
    for t in tests:
        if not t.startswith(dist.tests_prefix) or not (paths.REPO / t).is_file():
            problems.append(f"{patch.name}: test module {t} does not exist under {dist.tests_prefix}")
    if not any(f.startswith(dist.src_prefix) for f in patch.files):
        problems.append(f"{patch.name}: changes no file under {dist.src_prefix}")
    return problems


def wheel_reader(wheel: Path) -> Callable[[str], bytes | None]:
    zf = zipfile.ZipFile(wheel)
    names = set(zf.namelist())

    def read(rel: str) -> bytes | None:
        return zf.read(rel) if rel in names else None

    return read


def apply_to_pristine(base: Base, s: Series, patches: list[Patch]) -> dict[str, bytes | None]:
    """Apply to the pristine wheel's sources in a scratch tree; raises SeriesError naming patch, file and hunk."""
    return apply_series(patches, wheel_reader(dist_wheel(base, s.dist)), s.dist.src_prefix, s.dist.not_installed)
