"""Bad input: one clear line, a non-zero exit, and nothing lost (no partial file, no deleted venv, no fetch)."""

from __future__ import annotations

import json
import shutil

from fakerepo import replace_line

DOCSTRING = "    :param parallelism: how many parallel processes are run in the executor, must be > 0\n"
NAME = "apache_airflow_core-3.1.3-py3-none-any.whl"


def test_export_of_a_non_utf8_patch_is_one_line_and_leaves_the_old_mbox(fake_repo, tmp_path):
    patch = fake_repo.make_patch("0001-doc.patch", replace_line(DOCSTRING, DOCSTRING + "    (patched)\n"))
    patch.write_bytes(patch.read_bytes().replace(b"Why: the tooling", b"Why: the caf\xe9 tooling"))
    out = tmp_path / "out"
    out.mkdir()
    mbox = out / "series.mbox"
    mbox.write_text("the previous export\n")
    proc = fake_repo.memseries("export", "--base", "3.1.3", "-o", str(mbox))
    assert proc.returncode == 1
    assert proc.stderr == (
        "memseries export: error: 0001-doc.patch: line 6 is not UTF-8 (byte 0xe9): patches, tests and newsfragments "
        "must be UTF-8\n"
    )
    assert mbox.read_text() == "the previous export\n"
    assert [p.name for p in out.iterdir()] == ["series.mbox"]  # no temp file left either
    proc = fake_repo.memseries("export", "--base", "3.1.3")
    assert proc.returncode == 1
    assert not (fake_repo.root / "dist").exists() or not list((fake_repo.root / "dist").iterdir())


def test_export_of_a_non_utf8_test_module_writes_nothing(fake_repo):
    fake_repo.make_patch("0001-doc.patch", replace_line(DOCSTRING, DOCSTRING + "    (patched)\n"))
    (fake_repo.root / "airflow-core/tests/unit/test_dummy.py").write_bytes(b"# \xff\ndef test_dummy():\n    pass\n")
    proc = fake_repo.memseries("export", "--base", "3.1.3")
    assert proc.returncode == 1
    assert proc.stderr.strip().endswith("airflow-core/tests/unit/test_dummy.py: line 1 is not UTF-8 (byte 0xff): "
                                        "patches, tests and newsfragments must be UTF-8")
    assert not (fake_repo.root / "dist" / "series-3.1.3.mbox").exists()


def test_venv_that_cannot_be_rebuilt_keeps_the_working_one(fake_repo):
    patch = fake_repo.make_patch("0001-doc.patch", replace_line(DOCSTRING, DOCSTRING + "    (patched)\n"))
    venv = fake_repo.root / ".venv" / "airflow-3.1.3-patched"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text("#!/bin/sh\n")
    (venv / ".memseries-stamp.json").write_text(json.dumps({"an": "older stamp"}))
    patch.write_text(patch.read_text().replace(" It uses the multiprocessing", " It uses the threading"))
    proc = fake_repo.memseries("venv", "--base", "3.1.3")
    assert proc.returncode == 1
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "0001-doc.patch: airflow-core/src/airflow/executors/local_executor.py: hunk #1" in proc.stderr
    assert (venv / "bin" / "python").read_text() == "#!/bin/sh\n"
    assert sorted(p.name for p in venv.parent.iterdir()) == ["airflow-3.1.3-patched"]


def test_offline_with_an_empty_cache_is_an_error_not_a_fetch(fake_repo, local_index, tmp_path):
    url, served = local_index
    fake_repo.make_patch("0001-doc.patch", replace_line(DOCSTRING, DOCSTRING + "    (patched)\n"))
    cache = tmp_path / "cache"
    proc = fake_repo.memseries("check", MEMSERIES_CACHE_DIR=str(cache), MEMSERIES_INDEX_URL=url, MEMSERIES_OFFLINE="1")
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        f"FAIL 3.1.3: {NAME} is not in the cache ({cache / 'wheels'}) and MEMSERIES_OFFLINE=1 forbids fetching it"
    )
    assert served == {"downloads": 0, "listings": 0}


def test_offline_with_a_corrupt_cached_wheel_is_an_error_and_keeps_it(fake_repo, local_index, tmp_path):
    url, served = local_index
    fake_repo.make_patch("0001-doc.patch", replace_line(DOCSTRING, DOCSTRING + "    (patched)\n"))
    cached = tmp_path / "cache" / "wheels" / NAME
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"not a wheel")
    proc = fake_repo.memseries("check", MEMSERIES_CACHE_DIR=str(cached.parents[1]), MEMSERIES_INDEX_URL=url,
                               MEMSERIES_OFFLINE="1")
    assert proc.returncode == 1
    assert "does not match the sha256 pinned in" in proc.stderr and "MEMSERIES_OFFLINE=1 forbids" in proc.stderr
    assert served == {"downloads": 0, "listings": 0}
    assert cached.read_bytes() == b"not a wheel"


def test_offline_with_a_good_cache_works(fake_repo, wheel, local_index, tmp_path):
    url, served = local_index
    fake_repo.make_patch("0001-doc.patch", replace_line(DOCSTRING, DOCSTRING + "    (patched)\n"))
    cache = tmp_path / "cache"
    (cache / "wheels").mkdir(parents=True)
    shutil.copy(wheel, cache / "wheels" / NAME)
    proc = fake_repo.memseries("check", MEMSERIES_CACHE_DIR=str(cache), MEMSERIES_INDEX_URL=url, MEMSERIES_OFFLINE="1")
    assert proc.returncode == 0, proc.stderr
    assert served == {"downloads": 0, "listings": 0}
