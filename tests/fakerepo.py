"""Throw-away trees shaped like this repo, with patches made by real git, for the tooling tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BASE = "3.1.3"
TARGET = "airflow/executors/local_executor.py"  # the file the fixture patches touch
CELERY = "3.26.0"  # the celery provider both bases pin
CELERY_TARGET = "airflow/providers/celery/executors/celery_executor.py"
GIT_ID = ["-c", "user.name=t", "-c", "user.email=t@localhost"]


def pristine_wheel(dist: str = "AIRFLOW_CORE") -> Path:
    """The real wheel (core, or e.g. "provider('celery')") of the base, fetched once through the tool's own cache."""
    out = subprocess.run([sys.executable, "-c", "from memseries.bases import *; from memseries.fetch import "
                          f"dist_wheel; print(dist_wheel(get_base('{BASE}'), {dist}))"], capture_output=True,
                         text=True, check=True, env={k: v for k, v in os.environ.items() if k != "MEMSERIES_REPO"})
    return Path(out.stdout.strip())


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *GIT_ID, "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout


HEADER = """{subject}

Why: the tooling tests need a patch.

Upstream-PR: none
Bug: https://github.com/apache/airflow/issues/1
Applied-Upstream: no
Forwarded: no
Tests: airflow-core/tests/unit/test_dummy.py
Newsfragment: newsfragments/1.misc.rst
"""


class FakeRepo:
    def __init__(self, root: Path, wheel: Path):
        self.root = root
        self.wheel = wheel
        self.base_dir = root / "airflow-core" / "patches" / BASE
        self.base_dir.mkdir(parents=True)
        shutil.copy(REPO / "airflow-core" / "patches" / BASE / "constraints.txt", self.base_dir)
        (self.base_dir / "series").write_text("")
        (root / "newsfragments").mkdir()
        (root / "newsfragments" / "1.misc.rst").write_text("A dummy change.\n")
        tests = root / "airflow-core" / "tests" / "unit"
        tests.mkdir(parents=True)
        (tests / "test_dummy.py").write_text("def test_dummy():\n    assert False\n")
        self._work = root.parent / f"{root.name}-git"

    def env(self, **extra) -> dict:
        return {**os.environ, "MEMSERIES_REPO": str(self.root), **extra}

    def memseries(self, *args: str, **env) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "memseries", *args], capture_output=True, text=True,
                              env=self.env(**env), cwd=self.root)

    def add_celery_series(self, celery_wheel: Path, bases: str | None = None) -> Path:
        """providers/celery/patches/3.26.0/ with an empty series, its test module and newsfragment."""
        self.celery_wheel = celery_wheel
        d = self.root / "providers" / "celery" / "patches" / CELERY
        d.mkdir(parents=True)
        (d / "series").write_text("")
        if bases is not None:
            (d / "bases").write_text(bases)
        tests = self.root / "providers" / "celery" / "tests" / "unit" / "celery"
        tests.mkdir(parents=True)
        (tests / "test_celery_dummy.py").write_text("def test_celery_dummy():\n    assert False\n")
        frag = self.root / "providers" / "celery" / "newsfragments"
        frag.mkdir(parents=True)
        (frag / "2.bugfix.rst").write_text("A dummy celery fix.\n")
        return d

    def make_celery_patch(self, name: str, edit, subject: str = "Change the celery executor") -> Path:
        header = (HEADER.replace("Tests: airflow-core/tests/unit/test_dummy.py",
                                 "Tests: providers/celery/tests/unit/celery/test_celery_dummy.py")
                  .replace("Newsfragment: newsfragments/1.misc.rst",
                           "Newsfragment: providers/celery/newsfragments/2.bugfix.rst"))
        return self.make_patch(name, edit, subject, header, src_root="providers/celery/src", target=CELERY_TARGET,
                               wheel=self.celery_wheel, series_dir=self.root / "providers/celery/patches" / CELERY)

    def make_patch(self, name: str, edit, subject: str = "Change the local executor", header: str = HEADER,
                   src_root: str = "airflow-core/src", target: str = TARGET, wheel: Path | None = None,
                   series_dir: Path | None = None) -> Path:
        """Commit `edit(text) -> text` of `target` (on top of earlier patches) and add it to the series."""
        work = self._work.with_name(self._work.name + "-" + src_root.replace("/", "-"))
        src = work / src_root / target
        if not work.exists():
            src.parent.mkdir(parents=True)
            with zipfile.ZipFile(wheel or self.wheel) as zf:
                src.write_bytes(zf.read(target))
            git(work, "init", "-q")
            git(work, "add", "-A")
            git(work, "commit", "-qm", "base")
        src.write_text(edit(src.read_text()))
        git(work, "commit", "-qam", header.format(subject=subject))
        text = git(work, "format-patch", "-1", "--stdout", "--no-stat", "--no-signature", "--zero-commit", "-N")
        series_dir = series_dir or self.base_dir
        path = series_dir / name
        path.write_text(text)
        with (series_dir / "series").open("a") as f:
            f.write(name + "\n")
        return path


def replace_line(old: str, new: str):
    def edit(text: str) -> str:
        assert old in text, old
        return text.replace(old, new, 1)

    return edit
