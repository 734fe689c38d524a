"""validate_plugin against unpacked wheels built on the fly."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from apt_sandbox import EntryReport, Limits, ValidationReport, validate_plugin

GOOD = """
from dataclasses import dataclass

from apt.providers import AttentionProvider, FFNProvider


class TriVein(AttentionProvider):
    name = "tva"

    @dataclass
    class Config:
        r: int = 4

    def build(self, dims, layer):
        raise NotImplementedError

    def self_test(self):
        assert self.config.r == 4
        return "tva ok"


class NoSelfTest(FFNProvider):
    name = "plain"

    @dataclass
    class Config:
        width: int = 8

    def build(self, dims, layer):
        raise NotImplementedError
"""

HOOKS = """
from apt.hookspecs import hookimpl


@hookimpl
def apt_step_end(metrics):
    metrics["seen"] = True
"""

BAD = """
from dataclasses import dataclass

from apt.providers import AttentionProvider, RouterProvider, VoterProvider


class WrongName(AttentionProvider):
    name = "something_else"

    def build(self, dims, layer):
        raise NotImplementedError


class NoConfig(RouterProvider):
    name = "noconfig"
    Config = None

    def build(self, dims, layer, make_ffn):
        raise NotImplementedError


class FailingTest(VoterProvider):
    name = "broken"
    vote_hook = "bad_plugin.providers:not_a_class"

    @dataclass
    class Config:
        size: int = 1

    def build(self):
        raise NotImplementedError

    def self_test(self):
        raise RuntimeError("self-test failed on purpose")


class NotAProvider:
    kind = "ffn"
    name = "duck"


def not_a_class():
    return 1
"""

UNKNOWN_HOOK = """
def apt_not_a_hook(trainer):
    return None
"""

NEEDS_CORE = """
import apt_core_dependency_that_is_not_installed
"""

SPIN = """
from apt.providers import FFNProvider


class Spin(FFNProvider):
    name = "spin"

    def build(self, dims, layer):
        raise NotImplementedError

    def self_test(self):
        n = 0
        while True:
            n += 1
"""


def make_site(root: Path, dist: str, version: str, modules: dict[str, str], entry_points: str) -> Path:
    site = root / "site"
    for name, source in modules.items():
        pkg = site / name.split(".")[0]
        pkg.mkdir(parents=True, exist_ok=True)
        (pkg / "__init__.py").touch()
        (site / (name.replace(".", "/") + ".py")).write_text(textwrap.dedent(source))
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))
    return site


def test_good_plugin_validates(tmp_path):
    site = make_site(
        tmp_path,
        "apt-plugin-good",
        "1.2.3",
        {"good_plugin.providers": GOOD, "good_plugin.hooks": HOOKS},
        """
        [apt.providers]
        attention.tva = good_plugin.providers:TriVein
        ffn.plain = good_plugin.providers:NoSelfTest

        [apt.plugins]
        good_hooks = good_plugin.hooks

        [console_scripts]
        ignored = good_plugin.hooks:apt_step_end
        """,
    )
    report = validate_plugin(site, "apt-plugin-good", Limits(wall_seconds=30))
    assert isinstance(report, ValidationReport)
    assert report.ok, report
    assert report.status == "ok"
    assert report.version == "1.2.3"
    by_name = {e.name: e for e in report.entries}
    assert set(by_name) == {"attention.tva", "ffn.plain", "good_hooks"}
    assert by_name["attention.tva"].detail == "tva ok"
    assert by_name["ffn.plain"].detail == "no self-test"
    assert by_name["good_hooks"].group == "apt.plugins"
    assert by_name["good_hooks"].detail == "hooks match apt.hookspecs"
    assert report.isolation["seccomp"] in (True, False)
    json.dumps(report.to_dict())


def test_bad_entries_are_reported_individually(tmp_path):
    site = make_site(
        tmp_path,
        "apt-plugin-bad",
        "0.1.0",
        {"bad_plugin.providers": BAD, "bad_plugin.core": NEEDS_CORE, "bad_plugin.hooks": UNKNOWN_HOOK},
        """
        [apt.providers]
        attention.tva = bad_plugin.providers:WrongName
        router.noconfig = bad_plugin.providers:NoConfig
        voter.broken = bad_plugin.providers:FailingTest
        quant.func = bad_plugin.providers:not_a_class
        ffn.duck = bad_plugin.providers:NotAProvider
        retriever.core = bad_plugin.core:Thing
        badname = bad_plugin.providers:WrongName

        [apt.plugins]
        unknown = bad_plugin.hooks
        """,
    )
    report = validate_plugin(site, "apt-plugin-bad", Limits(wall_seconds=30))
    assert report.status == "ok"
    assert not report.ok
    details = {e.name: e for e in report.entries}
    assert all(e.status == "error" for e in report.entries)
    assert "something_else" in details["attention.tva"].detail
    assert "Config must be a dataclass" in details["router.noconfig"].detail
    assert "not a subclass of apt.providers.FFNProvider" in details["ffn.duck"].detail
    assert "apt_not_a_hook" in details["unknown"].detail
    assert "self-test failed on purpose" in details["voter.broken"].detail
    assert "must point at a class" in details["quant.func"].detail
    assert "ModuleNotFoundError" in details["retriever.core"].detail
    assert "<kind>.<name>" in details["badname"].detail
    assert all(isinstance(e, EntryReport) for e in report.entries)


def test_hanging_self_test_times_out(tmp_path):
    site = make_site(
        tmp_path, "apt-plugin-spin", "1.0.0", {"spin_plugin.providers": SPIN},
        "[apt.providers]\nffn.spin = spin_plugin.providers:Spin\n"
    )
    report = validate_plugin(site, "apt-plugin-spin", Limits(wall_seconds=2, cpu_seconds=30))
    assert report.status == "timeout"
    assert not report.ok
    assert report.entries == []


def test_unknown_distribution(tmp_path):
    site = make_site(
        tmp_path, "apt-plugin-x", "1.0.0", {"x_plugin.hooks": HOOKS}, "[apt.plugins]\nx = x_plugin.hooks\n"
    )
    report = validate_plugin(site, "apt-plugin-other")
    assert not report.ok
    assert report.status == "ok"
    assert "not found" in report.detail


def test_missing_site_dir(tmp_path):
    with pytest.raises(FileNotFoundError):
        validate_plugin(tmp_path / "nope", "anything")
