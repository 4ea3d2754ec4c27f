"""`memseries venv`: per-Python venvs, rebuilt beside the working one and swapped in whole."""

from __future__ import annotations

import json
import subprocess

import pytest


@pytest.mark.parametrize("python", ["3.13"])
def test_venv_on_another_python_is_built_beside_and_swapped(fake_repo, python):
    # The first build may fetch (a fresh machine's uv cache has no wheels for this Python yet); the rebuild below
    # must then work offline, from the cache alone.
    proc = fake_repo.memseries("venv", "--base", "3.1.3", "--unpatched", "--python", python)
    assert proc.returncode == 0, proc.stderr
    path = fake_repo.root / ".venv" / f"airflow-3.1.3-py{python}"
    assert proc.stdout.strip() == str(path)
    version = subprocess.run([path / "bin" / "python", "-c", "import sys, airflow; print(sys.version[:4], airflow.__version__)"],
                             capture_output=True, text=True, check=True).stdout.split()
    assert version == [python, "3.1.3"]
    stamp = json.loads((path / ".memseries-stamp.json").read_text())
    assert (stamp["python"], stamp["patched"]) == (python, False)
    inode = path.stat().st_ino
    proc = fake_repo.memseries("venv", "--base", "3.1.3", "--unpatched", "--python", python, "--force",
                               MEMSERIES_OFFLINE="1")
    assert proc.returncode == 0, proc.stderr
    assert path.stat().st_ino != inode  # a new venv was swapped in...
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # ...and nothing else left beside it
    out = subprocess.run([path / "bin" / "airflow", "version"], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "3.1.3"  # its scripts work at the final path (relocatable)


def test_unsupported_python_is_refused(fake_repo):
    proc = fake_repo.memseries("venv", "--base", "3.1.3", "--python", "3.10")
    assert proc.returncode == 2
    assert "invalid choice: '3.10'" in proc.stderr
