"""Fixtures for end-to-end tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PLUGINS = ["apt-plugin-tva", "apt-plugin-moe", "apt-plugin-align", "apt-plugin-flash", "apt-plugin-voter",
           "apt-plugin-retriever", "apt-plugin-quant", "apt-plugin-tune", "apt-plugin-report",
           "apt-plugin-monitor", "apt-plugin-bpe", "apt-plugin-vision", "apt-plugin-audio"]


@pytest.fixture
def env(tmp_path) -> dict[str, str]:
    e = dict(os.environ)
    e["APT_HOME"] = str(tmp_path / "apt_home")
    e["PYTHONUNBUFFERED"] = "1"
    e.pop("PYTHONPATH", None)
    return e


@pytest.fixture(scope="session")
def venv_without_plugins(tmp_path_factory) -> str:
    """A copy of the test environment (hard links, about a second) with the training plugins uninstalled."""
    prefix = Path(sys.prefix)
    if prefix == Path(sys.base_prefix):
        pytest.skip("needs to run inside a virtual environment")
    clone = tmp_path_factory.mktemp("venv") / "env"
    shutil.copytree(prefix, clone, symlinks=True, copy_function=os.link)
    subprocess.run([str(clone / "bin" / "python"), "-m", "pip", "uninstall", "-y", "-q", *PLUGINS],
                   check=True, capture_output=True)
    return str(clone / "bin" / "python")
