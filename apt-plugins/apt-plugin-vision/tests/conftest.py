"""A private APT_HOME and subprocess environment for every test of this package."""

from __future__ import annotations

import os

import pytest


@pytest.fixture
def env(apt_home) -> dict[str, str]:
    e = dict(os.environ)
    e["APT_HOME"] = str(apt_home)
    e["PYTHONUNBUFFERED"] = "1"
    e.pop("PYTHONPATH", None)
    return e
