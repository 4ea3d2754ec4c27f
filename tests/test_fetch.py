"""The base wheel cache: verified against the pinned hash, fetched again when corrupt, usable offline."""

from __future__ import annotations

import shutil

NAME = "apache_airflow_core-3.1.3-py3-none-any.whl"


def test_first_run_downloads_second_run_uses_cache(fake_repo, local_index, tmp_path):
    url, served = local_index
    cache = tmp_path / "cache"
    for _ in range(2):
        proc = fake_repo.memseries("check", MEMSERIES_CACHE_DIR=str(cache), MEMSERIES_INDEX_URL=url)
        assert proc.returncode == 0, proc.stderr
    assert served["downloads"] == 1
    assert (cache / "wheels" / NAME).read_bytes() == fake_repo.wheel.read_bytes()


def test_second_run_works_offline(fake_repo, wheel, tmp_path):
    cache = tmp_path / "cache"
    (cache / "wheels").mkdir(parents=True)
    shutil.copy(wheel, cache / "wheels" / NAME)
    # port 9 (discard) on loopback: nothing listens, every request fails at once
    proc = fake_repo.memseries("check", MEMSERIES_CACHE_DIR=str(cache), MEMSERIES_INDEX_URL="http://127.0.0.1:9/simple")
    assert proc.returncode == 0, proc.stderr


def test_corrupted_cached_wheel_is_detected_and_fetched_again(fake_repo, local_index, tmp_path):
    url, served = local_index
    cached = tmp_path / "cache" / "wheels" / NAME
    cached.parent.mkdir(parents=True)
    data = bytearray(fake_repo.wheel.read_bytes())
    data[len(data) // 2] ^= 0xFF
    cached.write_bytes(bytes(data))
    proc = fake_repo.memseries("check", MEMSERIES_CACHE_DIR=str(cached.parents[1]), MEMSERIES_INDEX_URL=url)
    assert proc.returncode == 0, proc.stderr
    assert "does not match its pinned sha256; fetching it again" in proc.stderr
    assert served["downloads"] == 1
    assert cached.read_bytes() == fake_repo.wheel.read_bytes()


def test_corrupted_cache_and_no_network_is_one_clear_error(fake_repo, tmp_path):
    cached = tmp_path / "cache" / "wheels" / NAME
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"not a wheel")
    proc = fake_repo.memseries("check", MEMSERIES_CACHE_DIR=str(cached.parents[1]),
                               MEMSERIES_INDEX_URL="http://127.0.0.1:9/simple")
    assert proc.returncode == 1
    assert "FAIL 3.1.3: cannot reach the package index at http://127.0.0.1:9/simple/apache-airflow-core/" in proc.stderr
    assert not cached.exists()
