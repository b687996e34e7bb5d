"""Shared test set-up: a private cache folder, no progress bars, no network, real-data paths."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def isolated_environment(tmp_path_factory):
    """Caches go to a temporary folder; progress bars are off; the Hub counts as offline."""
    os.environ["PROJECT_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    os.environ["NO_PROGRESS"] = "1"
    os.environ["HF_HUB_OFFLINE"] = "1"
    yield


def shared_data(name: str) -> Path:
    """../shared/data/<name>, or skip the test when this clone has no shared data."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"real data not available at {path}")
    return path
