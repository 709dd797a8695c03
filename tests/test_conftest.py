"""The real-data tests' guard: a missing ../shared file skips on a developer's machine and fails in CI."""
import pytest
from conftest import unavailable


def test_missing_shared_data_skips_outside_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="cifar10.tar.gz not found"):
        unavailable("../shared/data/cifar10.tar.gz not found")


@pytest.mark.parametrize("value", ["true", "True", "1"])
def test_missing_shared_data_fails_in_ci(monkeypatch, value):
    monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.fail.Exception, match="cifar10.tar.gz not found.*CI=true"):
        unavailable("../shared/data/cifar10.tar.gz not found")
