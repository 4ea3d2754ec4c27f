"""Bases and the series patched on them: distributions as data.

A **base** is an Airflow release: a directory `airflow-core/patches/<version>/` with `requirements.in`, and
`constraints.txt` (exact hashed pins; authoritative for every distribution's version), plus, when core is
patched, `series` and the patch files.

A **series** is one distribution's patches for one of its versions, in `<root>/patches/<version>/` (`series` and
the patch files): `airflow-core/patches/<v>/`, `providers/<name>/patches/<v>/`, `task-sdk/patches/<v>/`. A
provider or task-sdk series is patched on a base when its directory's version is the version the base's
constraints pin for that distribution (and, if the series directory has a `bases` file, the base is listed
there). Resolve a base once (`get_base`) at the CLI edge and pass the `Base` down.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from memseries import paths
from memseries.errors import SeriesError

CORE = "apache-airflow-core"
# The base a verb uses when none is given: upstream's latest release, what operators run.
DEFAULT_BASE = "3.3.2"
# The upstream reference benchmarks compare an older base with.
UPSTREAM = "3.3.2"


@dataclass(frozen=True)
class Distribution:
    """A wheel we patch. Paths are apache/airflow repository paths."""

    name: str  # on PyPI: apache-airflow-core, apache-airflow-providers-celery, apache-airflow-task-sdk
    root: str  # its directory in the repository: airflow-core, providers/celery, task-sdk
    package: str  # the package inside the wheel whose __init__.py holds __version__
    newsfragments: str  # where this repo keeps its fragments (the Newsfragment: trailer's prefix)
    upstream_newsfragments: str  # where apache/airflow keeps them (export writes them there)

    @property
    def src_prefix(self) -> str:
        return f"{self.root}/src/"

    @property
    def tests_prefix(self) -> str:
        return f"{self.root}/tests/"

    @property
    def not_installed(self) -> tuple[str, ...]:
        """Repository paths a patch may carry that are not part of the wheel."""
        return (self.tests_prefix, self.newsfragments, self.upstream_newsfragments)

    @property
    def wheel_stem(self) -> str:
        return self.name.replace("-", "_")

    def wheel_name(self, version: str) -> str:
        return f"{self.wheel_stem}-{version}-py3-none-any.whl"


AIRFLOW_CORE = Distribution(CORE, "airflow-core", "airflow", "newsfragments/", "airflow-core/newsfragments/")
TASK_SDK = Distribution("apache-airflow-task-sdk", "task-sdk", "airflow/sdk", "task-sdk/newsfragments/",
                        "task-sdk/newsfragments/")


def provider(name: str) -> Distribution:
    """providers/<name> (e.g. celery, cncf/kubernetes) of apache/airflow."""
    root = f"providers/{name}"
    return Distribution(f"apache-airflow-providers-{name.replace('/', '-')}", root, f"airflow/providers/{name}",
                        f"{root}/newsfragments/", f"{root}/newsfragments/")


@dataclass(frozen=True)
class Series:
    dist: Distribution
    version: str
    dir: Path

    @property
    def label(self) -> str:
        return f"{self.dist.name} {self.version}"

    @property
    def series_file(self) -> Path:
        return self.dir / "series"

    @property
    def patched(self) -> bool:
        return self.series_file.exists()

    def for_base(self, base_version: str) -> bool:
        """A `bases` file in the series directory (one Airflow version a line) limits the bases it is patched on."""
        listed = self.dir / "bases"
        if not listed.is_file():
            return True
        return base_version in listed.read_text().split()

    def patch_files(self) -> list[Path]:
        """The patch files in order. Every listed file must exist and every patch file must be listed."""
        if not self.patched:
            raise SeriesError(f"{self.label} has no series ({self.series_file} is missing)")
        names = []
        for lineno, raw in enumerate(self.series_file.read_text().splitlines(), 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            if line in names:
                raise SeriesError(f"{self.series_file}:{lineno}: {line} is listed twice")
            if not (self.dir / line).is_file():
                raise SeriesError(f"{self.series_file}:{lineno}: patch {line} does not exist")
            names.append(line)
        unlisted = sorted(p.name for p in self.dir.glob("*.patch") if p.name not in names)
        if unlisted:
            raise SeriesError(f"{self.series_file}: patch file(s) not listed in the series: {', '.join(unlisted)}")
        return [self.dir / n for n in names]


def other_series() -> list[Series]:
    """Every provider and task-sdk series directory in the repository (patched or not)."""
    found = []
    for d in sorted(paths.REPO.glob("providers/**/patches/*/")):
        name = d.parent.parent.relative_to(paths.REPO / "providers").as_posix()
        found.append(Series(provider(name), d.name, d))
    for d in sorted(paths.REPO.glob("task-sdk/patches/*/")):
        found.append(Series(TASK_SDK, d.name, d))
    return [s for s in found if s.dir.is_dir()]


@dataclass(frozen=True)
class Base:
    version: str
    dir: Path

    @property
    def constraints(self) -> Path:
        return self.dir / "constraints.txt"

    def constraints_for(self, python: str | None = None) -> Path:
        """constraints-py3.13.txt when the pins differ on that Python, else constraints.txt."""
        if python:
            special = self.dir / f"constraints-py{python}.txt"
            if special.is_file():
                return special
        return self.constraints

    @property
    def requirements(self) -> Path:
        return self.dir / "requirements.in"

    @property
    def core(self) -> Series:
        return Series(AIRFLOW_CORE, self.version, self.dir)

    @cached_property
    def series(self) -> tuple[Series, ...]:
        """Every series patched on this base: core's first, then providers and task-sdk, by directory."""
        out = [self.core] if self.core.patched else []
        text = self.constraints.read_text()
        for s in other_series():
            if s.patched and _pin(text, s.dist.name) == s.version and s.for_base(self.version):
                out.append(s)
        return tuple(out)

    @property
    def patched(self) -> bool:
        return bool(self.series)

    def pinned_hashes(self, package: str = CORE) -> set[str]:
        """sha256 hashes the constraints file allows for `package` (wheel and sdist)."""
        text = self.constraints.read_text()
        m = re.search(rf"^{re.escape(package)}==\S+((?:\s*\\\n\s+--hash=sha256:[0-9a-f]+)+)", text, re.M)
        if not m:
            raise SeriesError(f"{self.constraints}: no hashed pin for {package}")
        return set(re.findall(r"sha256:([0-9a-f]{64})", m.group(1)))

    def pinned_version(self, package: str) -> str:
        version = _pin(self.constraints.read_text(), package)
        if version is None:
            raise SeriesError(f"{self.constraints}: {package} is not pinned")
        return version


def _pin(constraints_text: str, package: str) -> str | None:
    m = re.search(rf"^{re.escape(package)}==(\S+)", constraints_text, re.M)
    return m.group(1) if m else None


def all_bases() -> list[Base]:
    return [Base(d.name, d) for d in sorted(paths.PATCHES.iterdir()) if (d / "constraints.txt").is_file()]


def get_base(version: str) -> Base:
    bases = {b.version: b for b in all_bases()}
    if version not in bases:
        known = ", ".join(sorted(bases)) or "none"
        raise SeriesError(f"unknown base {version!r}: supported bases are {known} (directories under {paths.PATCHES})")
    base = bases[version]
    pinned = base.pinned_version(CORE)
    if pinned != version:
        raise SeriesError(f"{base.constraints} pins {CORE}=={pinned}, but the directory says {version}")
    return base


def patched_bases() -> list[Base]:
    return [b for b in all_bases() if b.patched]
