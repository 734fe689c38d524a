"""Every first-party plugin's manifest agrees with what its installed code declares."""

from pathlib import Path

import pytest
import tomllib

from apt.registry import default_registry

PLUGINS = sorted((Path(__file__).parent.parent / "apt-plugins").glob("apt-plugin-*/pyproject.toml"))


@pytest.mark.parametrize("pyproject", PLUGINS, ids=lambda p: p.parent.name)
def test_manifest_matches_the_providers(pyproject):
    data = tomllib.loads(pyproject.read_text())
    tool, entries = data["tool"]["apt"], data["project"]["entry-points"].get("apt.providers", {})
    assert "provides" not in tool, "[tool.apt] provides is derived from the apt.providers entry points; drop it"
    pack = pytest.importorskip("apt_marketplace.apx.pack")
    assert sorted(pack.manifest_from_project(pyproject.parent).provides) == sorted(entries)
    registry = default_registry()
    for key in entries:
        kind, _, name = key.partition(".")
        info = registry.info(kind, name)
        assert info is not None and info.distribution == data["project"]["name"], f"{key} is not installed from here"
        cls = registry.load(kind, name)
        assert cls.sandbox == tool.get("sandbox", "allowed"), (
            f"{key}: class declares sandbox={cls.sandbox!r}, manifest says {tool.get('sandbox')!r}")
