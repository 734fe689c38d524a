import os
import sys
from pathlib import Path

import pytest

from apt.profile import Profile, load_profile
from apt.registry import default_registry


@pytest.fixture(autouse=True)
def apt_home(tmp_path, monkeypatch):
    """Every test gets its own APT_HOME so caches and the error store never leak between tests."""
    home = tmp_path / "apt_home"
    monkeypatch.setenv("APT_HOME", str(home))
    return home


@pytest.fixture
def env(apt_home) -> dict[str, str]:
    """Environment for ``apt`` subprocesses: the test's APT_HOME, unbuffered, no inherited PYTHONPATH."""
    e = dict(os.environ)
    e["APT_HOME"] = str(apt_home)
    e["PYTHONUNBUFFERED"] = "1"
    e.pop("PYTHONPATH", None)
    return e


@pytest.fixture
def tiny_profile(tmp_path) -> Profile:
    """The shipped tiny profile, shrunk further and pointed at tmp_path."""
    return load_profile("tiny_debug", [
        "model.n_layer=1", "model.d_model=32", "model.block_size=16", "model.attention=sdpa",
        "train.max_iters=12", "train.batch_size=4", "train.eval_interval=6", "train.eval_iters=2",
        "train.warmup_iters=2", "checkpoint.every=4", f"checkpoint.dir={tmp_path / 'run'}",
    ])


@pytest.fixture
def on_path(monkeypatch):
    """Put a directory on sys.path for the test (for distributions made with apt.testing)."""
    def add(path: Path) -> Path:
        monkeypatch.syspath_prepend(str(path))
        default_registry.cache_clear()
        return path
    yield add
    default_registry.cache_clear()
    for name in [m for m in sys.modules if m.startswith("fakeprov")]:
        del sys.modules[name]
