"""``apt plugin new``: every kind scaffolds a package whose own tests pass as written."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import tomllib

from apt.providers import KINDS
from apt.scaffold import render


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_scaffolds_a_package_that_passes_its_tests(kind, tmp_path, apt_home):
    name = f"my_{kind}"
    folder = tmp_path / f"apt-plugin-{kind}"
    made = subprocess.run([sys.executable, "-m", "apt", "plugin", "new", kind, name, "--dir", str(folder)],
                          capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    assert f"wrote apt-plugin-my-{kind} ({kind}.{name})" in made.stdout
    project = tomllib.loads((folder / "pyproject.toml").read_text())
    assert project["project"]["entry-points"]["apt.providers"] == {
        f"{kind}.{name}": f"apt_plugin_{name}.provider:My{kind.capitalize()}Provider"}
    assert set(project["tool"]["apt"]) == {"core", "sandbox"}
    env = {**os.environ, "PYTHONPATH": str(folder / "src"), "APT_HOME": str(apt_home)}
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], cwd=folder,
                           capture_output=True, text=True, timeout=600, env=env)
    assert tests.returncode == 0, tests.stdout[-3000:]
    assert "passed" in tests.stdout and "failed" not in tests.stdout


def test_refuses_bad_names_and_occupied_folders(tmp_path):
    def new(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "apt", "plugin", "new", *args], capture_output=True, text=True,
                              timeout=60, cwd=tmp_path)

    bad = new("ffn", "Geglu-2")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    assert "must be a lower-case identifier" in bad.stderr
    (tmp_path / "apt-plugin-geglu").mkdir()
    (tmp_path / "apt-plugin-geglu" / "keep.txt").write_text("mine")
    taken = new("ffn", "geglu")
    assert taken.returncode == 2 and "already exists and is not an empty directory" in taken.stderr
    assert (tmp_path / "apt-plugin-geglu" / "keep.txt").read_text() == "mine"


def test_provider_modules_never_import_torch():
    for kind in KINDS:
        provider = render(kind, "x")["src/apt_plugin_x/provider.py"]
        top_level = [line for line in provider.splitlines() if line.startswith(("import ", "from "))]
        assert not any("torch" in line for line in top_level), (kind, top_level)
