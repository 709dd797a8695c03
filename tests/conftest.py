"""Shared test fixtures: paths to ../shared and small extracted subsets of its real data.

Without ../shared (or with one of its archives missing) the tests that need it skip on a developer's machine. In CI
(environment CI=true, as GitHub Actions and most CI services set it) they fail instead, so a renamed archive or a
moved folder cannot silently drop the real-data tests from a green run."""
import os
from pathlib import Path

import pytest
from data_helpers import REAL_SAMPLE, extract_sample

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def unavailable(reason: str) -> None:
    """Skip the test for lack of ../shared data, or fail it in CI, where the data must be there."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: in CI this is a failure, not a skip)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        unavailable(f"../shared not found at {SHARED}: real data, weights and fixtures are unavailable")
    return SHARED


@pytest.fixture(scope="session")
def real_data_root(shared_dir: Path, tmp_path_factory) -> Path:
    """A `cifar10_jpeg` root holding a seeded sample of ../shared/data (a few hundred images, not 80,000)."""
    data = shared_dir / "data"
    root = tmp_path_factory.mktemp("real_data")
    for archive, picks in REAL_SAMPLE.items():
        if not (data / archive).is_file():
            unavailable(f"{data / archive} not found: real-data tests need ../shared/data")
        extract_sample(data / archive, root, picks)
    return root
