"""Download and cache the pristine wheels a base patches, verified against the hashes its constraints pin.

With MEMSERIES_OFFLINE=1 nothing is fetched: a wheel missing from the cache, or one that does not match its pin,
is an error.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from memseries import paths
from memseries.bases import AIRFLOW_CORE, Base, Distribution
from memseries.errors import SeriesError

DEFAULT_INDEX = "https://pypi.org/simple"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _index_url() -> str:
    return os.environ.get("MEMSERIES_INDEX_URL", DEFAULT_INDEX).rstrip("/")


def offline() -> bool:
    return os.environ.get("MEMSERIES_OFFLINE") == "1"


def _find_file_url(dist: Distribution, filename: str) -> tuple[str, str]:
    """(url, sha256) of a wheel, from the index's JSON simple API (PEP 691)."""
    url = f"{_index_url()}/{dist.name}/"
    req = urllib.request.Request(url, headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            listing = json.load(resp)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise SeriesError(f"cannot reach the package index at {url} to fetch {filename}: {exc}") from exc
    for entry in listing.get("files", []):
        if entry.get("filename") == filename:
            return entry["url"], entry.get("hashes", {}).get("sha256", "")
    raise SeriesError(f"{filename} is not on the package index at {url}")


def dist_wheel(base: Base, dist: Distribution = AIRFLOW_CORE) -> Path:
    """The cached, verified wheel of `dist` at the version `base` pins; fetched when missing or not matching."""
    filename = dist.wheel_name(base.pinned_version(dist.name))
    allowed = base.pinned_hashes(dist.name)
    target = paths.cache_dir() / "wheels" / filename
    if target.exists():
        if _sha256(target) in allowed:
            return target
        if offline():
            raise SeriesError(f"cached {target} does not match the sha256 pinned in {base.constraints}, and "
                              "MEMSERIES_OFFLINE=1 forbids fetching it again")
        print(f"memseries: cached {target} does not match its pinned sha256; fetching it again", file=sys.stderr)
        target.unlink()
    elif offline():
        raise SeriesError(f"{filename} is not in the cache ({target.parent}) and MEMSERIES_OFFLINE=1 forbids fetching it")
    url, registry_sha = _find_file_url(dist, filename)
    if registry_sha and registry_sha not in allowed:
        raise SeriesError(f"the index's sha256 for {filename} ({registry_sha}) is not pinned in {base.constraints}")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".part")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        try:
            with urllib.request.urlopen(url, timeout=300) as resp, tmp_path.open("wb") as out:
                while chunk := resp.read(1 << 20):
                    out.write(chunk)
        except (urllib.error.URLError, OSError) as exc:
            raise SeriesError(f"download of {url} failed: {exc}") from exc
        got = _sha256(tmp_path)
        if got not in allowed:
            raise SeriesError(f"downloaded {filename} has sha256 {got}, not the one pinned in {base.constraints}")
        tmp_path.replace(target)
    finally:
        tmp_path.unlink(missing_ok=True)
    return target


def base_wheel(base: Base) -> Path:
    """The base's pristine apache-airflow-core wheel."""
    return dist_wheel(base, AIRFLOW_CORE)
