"""The supported bases: one directory per Airflow release under airflow-core/patches/.

A base directory holds `requirements.in` (what a venv of that base contains), `constraints.txt` (its exact,
hashed pins, `uv pip compile` output) and, when the base is patched, `series` plus the patch files.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from memseries import paths
from memseries.errors import SeriesError

CORE = "apache-airflow-core"
# The base a verb uses when none is given: upstream's latest release, what operators run.
DEFAULT_BASE = "3.3.2"
# The upstream reference benchmarks compare an older base with.
UPSTREAM = "3.3.2"


@dataclass(frozen=True)
class Base:
    version: str
    dir: Path

    @property
    def constraints(self) -> Path:
        return self.dir / "constraints.txt"

    @property
    def requirements(self) -> Path:
        return self.dir / "requirements.in"

    @property
    def series_file(self) -> Path:
        return self.dir / "series"

    @property
    def patched(self) -> bool:
        return self.series_file.exists()

    @property
    def wheel_name(self) -> str:
        return f"apache_airflow_core-{self.version}-py3-none-any.whl"

    def series(self) -> list[Path]:
        """The patch files in order. Every listed file must exist and every patch file must be listed."""
        if not self.patched:
            raise SeriesError(f"base {self.version} has no series ({self.series_file} is missing)")
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

    def pinned_hashes(self, package: str = CORE) -> set[str]:
        """sha256 hashes the constraints file allows for `package` (wheel and sdist)."""
        text = self.constraints.read_text()
        m = re.search(rf"^{re.escape(package)}==\S+((?:\s*\\\n\s+--hash=sha256:[0-9a-f]+)+)", text, re.M)
        if not m:
            raise SeriesError(f"{self.constraints}: no hashed pin for {package}")
        return set(re.findall(r"sha256:([0-9a-f]{64})", m.group(1)))

    def pinned_version(self, package: str) -> str:
        m = re.search(rf"^{re.escape(package)}==(\S+)", self.constraints.read_text(), re.M)
        if not m:
            raise SeriesError(f"{self.constraints}: {package} is not pinned")
        return m.group(1)


def all_bases() -> list[Base]:
    found = [Base(d.name, d) for d in sorted(paths.PATCHES.iterdir()) if (d / "constraints.txt").is_file()]
    return found


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
