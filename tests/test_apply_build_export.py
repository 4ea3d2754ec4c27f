"""apply (all or nothing), build (a local-version wheel with a valid RECORD), export (`git am` takes it)."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from fakerepo import TARGET, git, replace_line

DOCSTRING = "    :param parallelism: how many parallel processes are run in the executor, must be > 0\n"


def unpack(wheel: Path, dest: Path) -> Path:
    subprocess.run([sys.executable, "-m", "wheel", "unpack", str(wheel), "-d", str(dest)], check=True,
                   capture_output=True)
    return dest / "apache_airflow_core-3.1.3"


def tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode() + p.read_bytes())
    return h.hexdigest()


def test_apply_patches_an_unpacked_wheel(fake_repo, tmp_path):
    fake_repo.make_patch("0001-doc.patch", replace_line(DOCSTRING, DOCSTRING + "    (patched)\n"))
    root = unpack(fake_repo.wheel, tmp_path)
    proc = fake_repo.memseries("apply", "--base", "3.1.3", str(root))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"patched {TARGET}"
    assert "    (patched)\n" in (root / TARGET).read_text()


def test_apply_is_all_or_nothing(fake_repo, tmp_path):
    fake_repo.make_patch("0001-a.patch", replace_line(DOCSTRING, DOCSTRING + "    (first)\n"))
    second = fake_repo.make_patch("0002-b.patch", replace_line("    (first)\n", "    (first)\n    (second)\n"))
    second.write_text(second.read_text().replace("+    (second)", "+    (second)\n-    is_local: bool = True"))
    root = unpack(fake_repo.wheel, tmp_path)
    before = tree_digest(root)
    proc = fake_repo.memseries("apply", "--base", "3.1.3", str(root))
    assert proc.returncode == 1
    assert "0002-b.patch" in proc.stderr
    assert tree_digest(root) == before, "the first patch must not be left applied"


def test_apply_refuses_a_wheel_of_another_version(fake_repo, tmp_path):
    fake_repo.make_patch("0001-doc.patch", replace_line(DOCSTRING, DOCSTRING + "    (patched)\n"))
    other = fake_repo.root / "airflow-core" / "patches" / "3.3.2"
    shutil.copytree(fake_repo.base_dir, other)
    shutil.copy(Path(__file__).parents[1] / "airflow-core" / "patches" / "3.3.2" / "constraints.txt", other)
    root = unpack(fake_repo.wheel, tmp_path)
    proc = fake_repo.memseries("apply", "--base", "3.3.2", str(root))
    assert proc.returncode == 1
    assert proc.stderr.strip().endswith(f"{root} holds apache-airflow-core 3.1.3, not apache-airflow-core 3.3.2 of base 3.3.2")


def test_build_makes_a_local_version_wheel_with_a_valid_record(fake_repo, tmp_path):
    fake_repo.make_patch("0001-doc.patch", replace_line(DOCSTRING, DOCSTRING + "    (patched)\n"))
    proc = fake_repo.memseries("build", "--base", "3.1.3", "--label", "test.1", "--dist", str(tmp_path / "dist"))
    assert proc.returncode == 0, proc.stderr
    built = Path(proc.stdout.strip())
    assert built.name == "apache_airflow_core-3.1.3+test.1-py3-none-any.whl"
    # `wheel unpack` verifies every file against RECORD
    root = tmp_path / "check"
    subprocess.run([sys.executable, "-m", "wheel", "unpack", str(built), "-d", str(root)], check=True,
                   capture_output=True)
    with zipfile.ZipFile(built) as zf:
        assert "Version: 3.1.3+test.1" in zf.read("apache_airflow_core-3.1.3+test.1.dist-info/METADATA").decode()
        assert '__version__ = "3.1.3+test.1"' in zf.read("airflow/__init__.py").decode()
        assert "    (patched)\n" in zf.read(TARGET).decode()


def test_build_rejects_a_bad_label(fake_repo):
    proc = fake_repo.memseries("build", "--base", "3.1.3", "--label", "Not OK")
    assert proc.returncode == 1
    assert "is not a PEP 440 local version label" in proc.stderr


def test_export_is_accepted_by_git_am_with_tests_and_newsfragment(fake_repo, tmp_path):
    fake_repo.make_patch("0001-doc.patch", replace_line(DOCSTRING, DOCSTRING + "    (patched)\n"))
    mbox = tmp_path / "series.mbox"
    proc = fake_repo.memseries("export", "--base", "3.1.3", "-o", str(mbox))
    assert proc.returncode == 0, proc.stderr
    upstream = tmp_path / "upstream"
    src = upstream / "airflow-core" / "src" / TARGET
    src.parent.mkdir(parents=True)
    with zipfile.ZipFile(fake_repo.wheel) as zf:
        src.write_bytes(zf.read(TARGET))
    git(upstream, "init", "-q")
    git(upstream, "add", "-A")
    git(upstream, "commit", "-qm", "upstream at 3.1.3")
    git(upstream, "am", "-q", str(mbox))
    assert "    (patched)\n" in src.read_text()
    assert (upstream / "airflow-core/tests/unit/test_dummy.py").read_text() == "def test_dummy():\n    assert False\n"
    assert (upstream / "airflow-core/newsfragments/1.misc.rst").read_text() == "A dummy change.\n"
    message = git(upstream, "log", "-1", "--format=%B")
    assert "Applied-Upstream: no" in message
    assert "Tests:" not in message and "Newsfragment:" not in message


def test_workspace_and_refresh_round_trip(fake_repo, tmp_path):
    original = fake_repo.make_patch("0001-doc.patch", replace_line(DOCSTRING, DOCSTRING + "    (patched)\n"))
    ws = tmp_path / "ws"
    proc = fake_repo.memseries("workspace", "--base", "3.1.3", str(ws))
    assert proc.returncode == 0, proc.stderr
    assert "    (patched)\n" in (ws / "airflow-core" / "src" / TARGET).read_text()
    proc = fake_repo.memseries("refresh", "--base", "3.1.3", str(ws))
    assert proc.returncode == 0, proc.stderr
    assert (fake_repo.base_dir / "series").read_text() == "0001-doc.patch\n"
    assert fake_repo.memseries("check").returncode == 0
    assert original.read_text().split("\ndiff --git", 1)[1] == (fake_repo.base_dir / "0001-doc.patch").read_text().split("\ndiff --git", 1)[1]
