import logging
import sys

import pytest

from apt.errors import ProviderError
from apt.registry import Registry
from apt.testing import make_distribution

PROVIDERS = '''
from dataclasses import dataclass
from apt.config import option
from apt.providers import AttentionProvider, RouterProvider

@dataclass(frozen=True)
class Cfg:
    width: int = option(2, ge=1)

class Good(AttentionProvider):
    """A good provider."""
    name = "good"
    Config = Cfg
    def build(self, dims, layer):
        raise RuntimeError("not built in these tests")

@dataclass(frozen=True)
class BadDefaults:
    width: int = option(0, ge=1)
    def __post_init__(self):
        from apt.config import require
        require(self.width >= 1, "width", "must be >= 1")

class BadConfig(AttentionProvider):
    name = "badcfg"
    Config = BadDefaults
    def build(self, dims, layer):
        raise RuntimeError

class Misnamed(AttentionProvider):
    name = "other"
    def build(self, dims, layer):
        raise RuntimeError

class NotAnAttention(RouterProvider):
    name = "wrongkind"
    def build(self, dims, layer, make_ffn):
        raise RuntimeError
'''


@pytest.fixture
def registry(tmp_path, on_path):
    on_path(make_distribution(tmp_path / "site", "fakeprov-dist", "0.3.1", entry_points={"apt.providers": {
        "attention.good": "fakeprov.mod:Good",
        "attention.badcfg": "fakeprov.mod:BadConfig",
        "attention.misnamed": "fakeprov.mod:Misnamed",
        "attention.wrongkind": "fakeprov.mod:NotAnAttention",
        "attention.missing": "fakeprov.nowhere:Thing",
        "nonsense": "fakeprov.mod:Good",
    }}, modules={"fakeprov/__init__.py": "", "fakeprov/mod.py": PROVIDERS}))
    return Registry()


def test_listing_reads_metadata_without_importing(registry):
    infos = {i.key: i for i in registry.infos()}
    assert "fakeprov.mod" not in sys.modules
    good = infos["attention.good"]
    assert (good.distribution, good.version, good.value) == ("fakeprov-dist", "0.3.1", "fakeprov.mod:Good")
    assert infos["attention.tva"].default and infos["ffn.dense"].default
    assert {"attention.sdpa", "ffn.dense"} <= set(infos)


def test_load_caches_and_reports_broken(registry):
    cls = registry.load("attention", "good")
    assert registry.load("attention", "good") is cls
    reasons = {i.key: registry.problem(i) for i in registry.infos("attention")}
    assert reasons["attention.good"] is None
    assert "default config does not validate: width: must be >= 1" in reasons["attention.badcfg"]
    assert "class declares name 'other'" in reasons["attention.misnamed"]
    assert "not a subclass of apt.providers.AttentionProvider" in reasons["attention.wrongkind"]
    assert "cannot import fakeprov.nowhere:Thing: ModuleNotFoundError" in reasons["attention.missing"]
    bad_name = [i for i in registry.infos() if i.kind == "nonsense"]
    assert bad_name and "must be '<kind>.<name>'" in registry.problem(bad_name[0])


def test_fallback_warns_once_and_strict_refuses(registry, caplog):
    caplog.set_level(logging.WARNING, logger="apt")
    empty = Registry([ep for ep in _core_eps()])
    first = empty.resolve("attention", None)
    second = empty.resolve("attention", "tva")
    assert first.name == second.name == "sdpa"
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings == ["no attention provider named 'tva' is installed (pip install apt-plugin-tva); "
                        "falling back to attention provider 'sdpa'"]
    with pytest.raises(ProviderError, match="--strict forbids falling back"):
        empty.resolve("attention", "tva", strict=True)


def test_broken_request_falls_back_with_reason(registry, caplog):
    caplog.set_level(logging.WARNING, logger="apt")
    res = registry.resolve("attention", "badcfg")
    assert res.name == "sdpa" and "default config does not validate" in res.warning


def test_optional_kind_left_out_and_aliases(registry, caplog):
    caplog.set_level(logging.WARNING, logger="apt")
    assert registry.resolve("router", None).provider is None
    res = Registry(_core_eps()).resolve("router", "topk_moe")
    assert res.provider is None and "pip install apt-plugin-moe" in res.warning
    assert registry.resolve("attention", "tva_default").name == "tva"


def test_make_validates_options(registry):
    provider = registry.make("attention", "good", {"width": 5})
    assert provider.config.width == 5
    with pytest.raises(Exception, match=r"providers.attention.good.width: expected a value >= 1"):
        registry.make("attention", "good", {"width": 0})


def _core_eps():
    from importlib.metadata import entry_points
    return [ep for ep in entry_points(group="apt.providers") if ep.dist.metadata["Name"] == "apt-core"]
