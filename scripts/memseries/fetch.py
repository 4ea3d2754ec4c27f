"""Download and cache the pristine apache-airflow-core wheel of a base, verified against the pinned hash."""

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
from memseries.bases import Base
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


def _find_file_url(base: Base) -> tuple[str, str]:
    """(url, sha256) of the base wheel, from the index's JSON simple API (PEP 691)."""
    url = f"{_index_url()}/apache-airflow-core/"
    req = urllib.request.Request(url, headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            listing = json.load(resp)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise SeriesError(f"cannot reach the package index at {url} to fetch {base.wheel_name}: {exc}") from exc
    for entry in listing.get("files", []):
        if entry.get("filename") == base.wheel_name:
            return entry["url"], entry.get("hashes", {}).get("sha256", "")
    raise SeriesError(f"{base.wheel_name} is not on the package index at {url}")


def base_wheel(base: Base) -> Path:
    """The cached, verified wheel; fetched when missing or when the cached file does not match its pin."""
    allowed = base.pinned_hashes()
    target = paths.cache_dir() / "wheels" / base.wheel_name
    if target.exists():
        if _sha256(target) in allowed:
            return target
        print(f"memseries: cached {target} does not match its pinned sha256; fetching it again", file=sys.stderr)
        target.unlink()
    url, registry_sha = _find_file_url(base)
    if registry_sha and registry_sha not in allowed:
        raise SeriesError(
            f"the index's sha256 for {base.wheel_name} ({registry_sha}) is not pinned in {base.constraints}"
        )
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
            raise SeriesError(f"downloaded {base.wheel_name} has sha256 {got}, not the one pinned in {base.constraints}")
        tmp_path.replace(target)
    finally:
        tmp_path.unlink(missing_ok=True)
    return target
