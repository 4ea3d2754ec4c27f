"""`memseries prove`: a patch whose tests pass without it is reported and fails the run."""

from __future__ import annotations

import shutil
from pathlib import Path

from fakerepo import replace_line

REPO = Path(__file__).resolve().parents[1]
UNPATCHED = REPO / ".venv" / "airflow-3.1.3" / "bin" / "python"
DOCSTRING = "    :param parallelism: how many parallel processes are run in the executor, must be > 0\n"


def test_prove_requires_a_failure_on_the_base(fake_repo):
    shutil.copy(REPO / "airflow-core" / "tests" / "conftest.py", fake_repo.root / "airflow-core" / "tests")
    fake_repo.make_patch("0001-doc.patch", replace_line(DOCSTRING, DOCSTRING + "    (patched)\n"))
    module = fake_repo.root / "airflow-core" / "tests" / "unit" / "test_dummy.py"

    proc = fake_repo.memseries("prove", "--base", "3.1.3", "--python", str(UNPATCHED))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "proven (fails on the base)" in proc.stdout

    module.write_text("def test_dummy():\n    assert True\n")
    proc = fake_repo.memseries("prove", "--base", "3.1.3", "--python", str(UNPATCHED))
    assert proc.returncode == 1
    assert "NOT PROVEN: nothing fails without the patch" in proc.stdout
    assert "1 test module(s) do not fail on the unpatched base 3.1.3" in proc.stdout
