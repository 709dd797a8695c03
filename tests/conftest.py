"""Shared test fixtures: paths to ../shared and small extracted subsets of its real data."""
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"../shared not found at {SHARED}: real data, weights and fixtures are unavailable")
    return SHARED
