"""`memseries unit`: each base runs only the test modules its own series lists."""

from __future__ import annotations

import shutil
from pathlib import Path

from fakerepo import replace_line

REPO = Path(__file__).resolve().parents[1]
DOCSTRING = "    :param parallelism: how many parallel processes are run in the executor, must be > 0\n"


def test_list_names_only_the_modules_of_that_base(fake_repo):
    fake_repo.make_patch("0001-doc.patch", replace_line(DOCSTRING, DOCSTRING + "    (patched)\n"))
    other = fake_repo.root / "airflow-core" / "patches" / "3.3.2"
    other.mkdir()
    shutil.copy(REPO / "airflow-core" / "patches" / "3.3.2" / "constraints.txt", other)
    proc = fake_repo.memseries("unit", "--base", "3.1.3", "--list")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "airflow-core/tests/unit/test_dummy.py\n"
    # 3.3.2 has no series here: no modules, and running them is a no-op, not an error
    proc = fake_repo.memseries("unit", "--base", "3.3.2", "--list")
    assert (proc.returncode, proc.stdout) == (0, "")
    proc = fake_repo.memseries("unit", "--base", "3.3.2")
    assert (proc.returncode, proc.stdout) == (0, "base 3.3.2 has no series: no test modules to run\n")


def test_default_base_is_3_3_2(fake_repo):
    proc = fake_repo.memseries("unit", "--list")
    assert proc.returncode == 1
    assert proc.stderr.startswith("memseries unit: error: unknown base '3.3.2': supported bases are 3.1.3")


def test_unit_runs_the_modules_with_the_given_python(fake_repo):
    shutil.copy(REPO / "airflow-core" / "tests" / "conftest.py", fake_repo.root / "airflow-core" / "tests")
    fake_repo.make_patch("0001-doc.patch", replace_line(DOCSTRING, DOCSTRING + "    (patched)\n"))
    (fake_repo.root / "airflow-core" / "tests" / "unit" / "test_other.py").write_text("def test_x():\n    assert 0\n")
    python = REPO / ".venv" / "airflow-3.1.3" / "bin" / "python"
    (fake_repo.root / "airflow-core" / "tests" / "unit" / "test_dummy.py").write_text("def test_d():\n    pass\n")
    proc = fake_repo.memseries("unit", "--base", "3.1.3", "--python", str(python))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 passed" in proc.stdout  # test_other.py is listed by no patch: not run
