"""Shared test fixtures: paths to ../shared and small extracted subsets of its real data."""
from pathlib import Path

import pytest
from data_helpers import REAL_SAMPLE, extract_sample

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"../shared not found at {SHARED}: real data, weights and fixtures are unavailable")
    return SHARED


@pytest.fixture(scope="session")
def real_data_root(shared_dir: Path, tmp_path_factory) -> Path:
    """A `cifar10_jpeg` root holding a seeded sample of ../shared/data (a few hundred images, not 80,000)."""
    data = shared_dir / "data"
    root = tmp_path_factory.mktemp("real_data")
    for archive, picks in REAL_SAMPLE.items():
        if not (data / archive).is_file():
            pytest.skip(f"{data / archive} not found: real-data tests need ../shared/data")
        extract_sample(data / archive, root, picks)
    return root
