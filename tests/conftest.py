"""Fixtures for the tooling tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from fakerepo import FakeRepo, pristine_wheel


@pytest.fixture(scope="session")
def wheel() -> Path:
    return pristine_wheel()


@pytest.fixture
def fake_repo(tmp_path, wheel) -> FakeRepo:
    return FakeRepo(tmp_path / "repo", wheel)



@pytest.fixture(scope="session")
def celery_wheel() -> Path:
    return pristine_wheel("provider('celery')")
