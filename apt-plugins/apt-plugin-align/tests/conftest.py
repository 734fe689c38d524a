import pytest


@pytest.fixture(autouse=True)
def apt_home(tmp_path, monkeypatch):
    """Every test gets its own APT_HOME so the error store and caches never leak between tests."""
    home = tmp_path / "apt_home"
    monkeypatch.setenv("APT_HOME", str(home))
    return home
