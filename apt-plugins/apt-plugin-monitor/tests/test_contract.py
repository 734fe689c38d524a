"""What APT asks of a hook-only plugin: found by its entry point, torch-free to import, hooks
that match apt.hookspecs, and options that fail as one line naming the key."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from apt.config import describe
from apt.plugins import PluginHost, instantiate_plugin
from apt.profile import load_profile
from apt_plugin_monitor import GradientMonitor, MonitorConfig
from core_cli import SMALL, assert_one_line_error, run


def test_entry_point_names_the_class() -> None:
    (ep,) = [ep for ep in entry_points(group="apt.plugins") if ep.name == "monitor"]
    assert ep.load() is GradientMonitor


def test_import_is_torch_free() -> None:
    code = "import sys, apt_plugin_monitor.plugin; assert 'torch' not in sys.modules, 'torch imported'"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_hooks_register_against_apt_hookspecs() -> None:
    host = PluginHost()
    host.register(instantiate_plugin(GradientMonitor, "monitor", None), "monitor")
    impls = {impl.plugin_name for impl in host.pm.hook.apt_after_backward.get_hookimpls()}
    assert impls == {"monitor"}


def test_every_option_is_documented() -> None:
    fields = describe(MonitorConfig)
    assert fields and all(f.doc for f in fields)


def test_profile_options_become_the_config() -> None:
    profile = load_profile("tiny_debug", ["plugins.monitor.enabled=true", "plugins.monitor.log_every=3",
                                          "plugins.monitor.explode_ratio=4"])
    host = PluginHost()
    host.load_entry_points(profile)
    (monitor,) = [p for name, p in host.pm.list_name_plugin() if name == "monitor"]
    assert isinstance(monitor, GradientMonitor)
    assert (monitor.config.log_every, monitor.config.explode_ratio) == (3, 4.0)


@pytest.mark.parametrize(("flag", "fragment"), [
    ("plugins.monitor.log_evry=3", "plugins.monitor.log_evry: unknown key (did you mean 'log_every'?)"),
    ("plugins.monitor.vanish_below=100", "plugins.monitor.vanish_below: must be below explode_above (10), got 100"),
])
def test_bad_option_is_one_line_naming_the_key(tmp_path: Path, flag: str, fragment: str) -> None:
    env = {**os.environ, "APT_HOME": str(tmp_path / "home")}
    result = run(["train", "-p", "tiny_debug", *SMALL, "--set", flag], env=env, cwd=tmp_path)
    assert_one_line_error(result, fragment)
