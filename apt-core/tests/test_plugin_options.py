"""Hook-only plugins configured from ``plugins.<name>``: options checked against the plugin's
``Config``, ``enabled`` and ``default_enabled``, and today's behaviour for plugins without one."""

from __future__ import annotations

from pathlib import Path

import pytest

from apt import config as cfg
from apt.errors import ConfigError
from apt.plugins import PluginHost
from apt.profile import Profile, load_profile
from apt.testing import make_distribution

CONFIGURED = '''
from dataclasses import dataclass

from apt import hookimpl, option


@dataclass(frozen=True)
class Config:
    every: int = option(5, ge=1, doc="steps between notes")
    label: str = option("note")


class Noter:
    Config = Config

    def __init__(self, config):
        self.config = config

    @hookimpl
    def apt_step_end(self, step, metrics):
        if step % self.config.every == 0:
            metrics[self.config.label] = step


class Shy(Noter):
    default_enabled = False
'''

PLAIN = '''
from apt import hookimpl


@hookimpl
def apt_step_end(step, metrics):
    metrics["plain"] = step
'''


@pytest.fixture
def installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    site = make_distribution(tmp_path / "site", "noter-plugins",
                             entry_points={"apt.plugins": {"noter": "noter:Noter", "shy": "noter:Shy", "plain": "plain"}},
                             modules={"noter.py": CONFIGURED, "plain.py": PLAIN})
    monkeypatch.syspath_prepend(str(site))
    return site


def profile(*sets: str) -> Profile:
    return load_profile("tiny_debug", list(sets))


def test_options_reach_the_plugin_as_its_config(installed: Path) -> None:
    host = PluginHost()
    host.load_entry_points(profile("plugins.noter.every=2", "plugins.noter.label=n"))
    assert {"noter", "plain"} <= set(host.names()) and "shy" in host.off
    metrics: dict[str, int] = {}
    host.call("apt_step_end", trainer=None, step=4, metrics=metrics)
    assert metrics == {"n": 4, "plain": 4}


def test_enabled_turns_plugins_on_and_off(installed: Path) -> None:
    host = PluginHost()
    host.load_entry_points(profile("plugins.shy.enabled=true", "plugins.noter.enabled=false",
                                   "plugins.plain.enabled=false"))
    assert "shy" in host.names() and {"noter", "plain"} <= host.off
    assert not {"noter", "plain"} & set(host.names())


@pytest.mark.parametrize(("flag", "message"), [
    ("plugins.noter.evry=2", "--set plugins.noter.evry=2: plugins.noter.evry: unknown key (did you mean 'every'?)"),
    ("plugins.noter.every=0", "plugins.noter.every: expected a value >= 1, got 0"),
    ("plugins.plain.every=2", "plugins.plain.every: unknown key; plugin 'plain' takes no options (only required, "
                              "enabled)"),
    ("plugins.plain.enabled=maybe", "plugins.plain.enabled: expected true or false"),
])
def test_bad_options_fail_at_load_naming_the_key(installed: Path, flag: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        profile(flag)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_required_plugin_cannot_be_disabled() -> None:
    with pytest.raises(ConfigError, match="plugins.x.enabled: a required plugin cannot be disabled"):
        profile("plugins.x.required=true", "plugins.x.enabled=false")


def test_options_of_plugins_not_installed_are_kept_and_round_trip() -> None:
    loaded = profile("plugins.elsewhere.depth=3", "plugins.elsewhere.required=true")
    assert loaded.plugins["elsewhere"].options == {"depth": 3}
    plain = loaded.to_dict()["plugins"]
    assert plain == {"elsewhere": {"required": True, "enabled": None, "depth": 3}}
    assert cfg.build(Profile, loaded.to_dict()).plugins == loaded.plugins


def test_a_config_on_a_non_class_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = make_distribution(tmp_path / "site", "odd", entry_points={"apt.plugins": {"odd": "odd"}},
                             modules={"odd.py": CONFIGURED.replace("class Noter:", "class Noter:  # unused")
                                      + "\nConfig = Config\n"})
    monkeypatch.syspath_prepend(str(site))
    failures: list[str] = []
    host = PluginHost(on_failure=lambda name, hook, err, tb: failures.append(f"{name} {hook}: {err}"))
    host.load_entry_points(profile())
    assert failures == ["odd load: plugin 'odd' declares a Config but its entry point is not a class; point the "
                        "entry point at the class so APT can construct it with its config"]


def test_enabling_a_plugin_that_is_not_installed_warns(installed: Path, caplog: pytest.LogCaptureFixture) -> None:
    PluginHost().load_entry_points(profile("plugins.montor.enabled=true"))
    assert "plugins.montor.enabled is true but no hook-only plugin 'montor' is installed" in caplog.text
