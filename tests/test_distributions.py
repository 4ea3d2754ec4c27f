"""Distributions as data: a provider series in providers/<name>/patches/<version>/ is patched on every base that
pins that version, checked, built as its own local-version wheel, exported as its own mbox, and tested."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from fakerepo import CELERY_TARGET, TARGET, replace_line

REPO = Path(__file__).resolve().parents[1]
DOCSTRING = "    :param parallelism: how many parallel processes are run in the executor, must be > 0\n"
CELERY_LINE = "class CeleryExecutor(BaseExecutor):\n"


def _both(fake_repo, celery_wheel, bases=None):
    fake_repo.add_celery_series(celery_wheel, bases)
    fake_repo.make_patch("0001-doc.patch", replace_line(DOCSTRING, DOCSTRING + "    (patched)\n"))
    fake_repo.make_celery_patch("0001-celery.patch", replace_line(CELERY_LINE, CELERY_LINE + "    # (patched)\n"))


def test_check_covers_the_provider_series(fake_repo, celery_wheel):
    _both(fake_repo, celery_wheel)
    proc = fake_repo.memseries("check")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "ok   3.1.3: 1 patches apply exactly, 1 files changed (apache-airflow-core 3.1.3)",
        "ok   3.1.3: 1 patches apply exactly, 1 files changed (apache-airflow-providers-celery 3.26.0)",
    ]


def test_provider_metadata_rules_use_the_provider_paths(fake_repo, celery_wheel):
    _both(fake_repo, celery_wheel)
    (fake_repo.root / "providers/celery/newsfragments/2.bugfix.rst").unlink()
    proc = fake_repo.memseries("check")
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        "FAIL 3.1.3: 0001-celery.patch: newsfragment providers/celery/newsfragments/2.bugfix.rst does not exist"
    )


def test_a_series_for_another_version_or_not_listed_base_is_not_patched(fake_repo, celery_wheel):
    _both(fake_repo, celery_wheel, bases="3.3.2\n")
    proc = fake_repo.memseries("check")
    assert proc.returncode == 0, proc.stderr
    assert "apache-airflow-providers-celery" not in proc.stdout
    (fake_repo.root / "providers/celery/patches/3.26.0/bases").unlink()
    (fake_repo.root / "providers/celery/patches/3.26.0").rename(fake_repo.root / "providers/celery/patches/3.25.0")
    proc = fake_repo.memseries("unit", "--base", "3.1.3", "--list")
    assert proc.stdout == "airflow-core/tests/unit/test_dummy.py\n"


def test_build_makes_one_local_version_wheel_per_distribution(fake_repo, celery_wheel, tmp_path):
    _both(fake_repo, celery_wheel)
    proc = fake_repo.memseries("build", "--base", "3.1.3", "--dist", str(tmp_path / "dist"))
    assert proc.returncode == 0, proc.stderr
    built = [Path(line) for line in proc.stdout.splitlines()]
    assert [b.name for b in built] == [
        "apache_airflow_core-3.1.3+memfix-py3-none-any.whl",
        "apache_airflow_providers_celery-3.26.0+memfix-py3-none-any.whl",
    ]
    subprocess.run([sys.executable, "-m", "wheel", "unpack", str(built[1]), "-d", str(tmp_path / "u")], check=True,
                   capture_output=True)  # verifies RECORD
    with zipfile.ZipFile(built[1]) as zf:
        info = "apache_airflow_providers_celery-3.26.0+memfix.dist-info/METADATA"
        assert "\nVersion: 3.26.0+memfix\n" in zf.read(info).decode()
        assert '__version__ = "3.26.0+memfix"' in zf.read("airflow/providers/celery/__init__.py").decode()
        assert CELERY_LINE + "    # (patched)\n" in zf.read(CELERY_TARGET).decode()
    with zipfile.ZipFile(built[0]) as zf:
        assert "    (patched)\n" in zf.read(TARGET).decode()


def test_export_writes_one_mbox_per_series(fake_repo, celery_wheel, tmp_path):
    _both(fake_repo, celery_wheel)
    proc = fake_repo.memseries("export", "--base", "3.1.3", "-o", str(tmp_path / "x.mbox"))
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        "memseries export: error: base 3.1.3 has 2 series: choose one with --distribution to use -o"
    )
    assert not (tmp_path / "x.mbox").exists()
    proc = fake_repo.memseries("export", "--base", "3.1.3")
    assert proc.returncode == 0, proc.stderr
    core, celery = (Path(p) for p in proc.stdout.split())
    assert (core.name, celery.name) == ("series-3.1.3.mbox", "series-apache-airflow-providers-celery-3.26.0.mbox")
    text = celery.read_text()
    assert "+++ b/providers/celery/tests/unit/celery/test_celery_dummy.py" in text
    assert "+++ b/providers/celery/newsfragments/2.bugfix.rst" in text
    assert "+++ b/providers/celery/src/airflow/providers/celery/executors/celery_executor.py" in text


def test_unit_lists_every_series_tests(fake_repo, celery_wheel):
    _both(fake_repo, celery_wheel)
    proc = fake_repo.memseries("unit", "--base", "3.1.3", "--list")
    assert proc.stdout.splitlines() == [
        "airflow-core/tests/unit/test_dummy.py",
        "providers/celery/tests/unit/celery/test_celery_dummy.py",
    ]


def test_workspace_holds_both_and_refresh_sorts_commits_by_distribution(fake_repo, celery_wheel, tmp_path):
    _both(fake_repo, celery_wheel)
    ws = tmp_path / "ws"
    proc = fake_repo.memseries("workspace", "--base", "3.1.3", str(ws))
    assert proc.returncode == 0, proc.stderr
    src = ws / "providers/celery/src" / CELERY_TARGET
    assert "    # (patched)\n" in src.read_text()
    src.write_text(src.read_text().replace("    # (patched)\n", "    # (patched)\n    # (second)\n"))
    subprocess.run(["git", "-C", str(ws), "-c", "user.name=t", "-c", "user.email=t@l", "commit", "-qam",
                    "Second celery change\n\nUpstream-PR: none\nBug: x\nApplied-Upstream: no\nForwarded: no\n"
                    "Tests: providers/celery/tests/unit/celery/test_celery_dummy.py\n"
                    "Newsfragment: providers/celery/newsfragments/2.bugfix.rst\n"], check=True)
    proc = fake_repo.memseries("refresh", "--base", "3.1.3", str(ws))
    assert proc.returncode == 0, proc.stderr
    assert (fake_repo.base_dir / "series").read_text() == "0001-doc.patch\n"
    celery = fake_repo.root / "providers/celery/patches/3.26.0"
    assert (celery / "series").read_text() == "0001-celery.patch\n0002-Second-celery-change.patch\n"
    assert fake_repo.memseries("check").returncode == 0
