"""Every first-party plugin's manifest agrees with what its installed code declares."""

import tomllib
from pathlib import Path

import pytest

from apt.registry import default_registry

PLUGINS = sorted((Path(__file__).parent.parent / "apt-plugins").glob("apt-plugin-*/pyproject.toml"))


@pytest.mark.parametrize("pyproject", PLUGINS, ids=lambda p: p.parent.name)
def test_manifest_matches_the_providers(pyproject):
    data = tomllib.loads(pyproject.read_text())
    tool, entries = data["tool"]["apt"], data["project"]["entry-points"].get("apt.providers", {})
    assert sorted(tool["provides"]) == sorted(entries), "[tool.apt] provides must list the apt.providers entries"
    registry = default_registry()
    for key in entries:
        kind, _, name = key.partition(".")
        info = registry.info(kind, name)
        assert info is not None and info.distribution == data["project"]["name"], f"{key} is not installed from here"
        cls = registry.load(kind, name)
        assert cls.sandbox == tool.get("sandbox", "allowed"), (
            f"{key}: class declares sandbox={cls.sandbox!r}, manifest says {tool.get('sandbox')!r}")
