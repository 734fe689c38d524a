import logging
from importlib.metadata import entry_points, version

import apt_plugin_flash
from apt.cli import main
from apt.registry import GROUP, Registry
from apt_plugin_flash.provider import FlashV2Provider


def test_listed_with_its_version(capsys):
    info = Registry().info("attention", "flash_v2")
    assert (info.distribution, info.version) == ("apt-plugin-flash", version("apt-plugin-flash"))
    assert info.version == apt_plugin_flash.__version__
    assert Registry().load("attention", "flash_v2") is FlashV2Provider
    assert main(["plugin", "list", "--kind", "attention"]) == 0
    row = next(line.split() for line in capsys.readouterr().out.splitlines() if "flash_v2" in line)
    assert row[:4] == ["attention", "flash_v2", apt_plugin_flash.__version__, "apt-plugin-flash"] and row[-1] == "ok"


def test_gone_once_uninstalled_and_requests_fall_back_to_sdpa(caplog):
    remaining = [ep for ep in entry_points(group=GROUP) if ep.dist is None or ep.dist.name != "apt-plugin-flash"]
    registry = Registry(remaining)
    assert "flash_v2" not in [i.name for i in registry.infos("attention")]
    with caplog.at_level(logging.WARNING, logger="apt"):
        resolution = registry.resolve("attention", "flash_v2")
    assert resolution.name == "sdpa"
    assert "pip install apt-plugin-flash" in resolution.warning and "pip install apt-plugin-flash" in caplog.text
