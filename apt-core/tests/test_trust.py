"""The trust decision and its store: by distribution, from metadata, never by a name's prefix alone."""

from __future__ import annotations

import importlib
import json
import sys
import threading

import pytest

from apt.errors import AptError
from apt.testing import make_distribution
from apt.trust import TrustStore, first_party, is_trusted


@pytest.fixture
def site(tmp_path, monkeypatch):
    path = tmp_path / "site"
    path.mkdir()
    monkeypatch.syspath_prepend(str(path))
    yield path
    importlib.invalidate_caches()


def test_a_first_party_name_installed_from_a_downloaded_wheel_is_not_first_party(site):
    make_distribution(site, "apt-plugin-tune", "9.0.0")
    assert first_party("apt-plugin-tune")
    info = next(site.glob("apt_plugin_tune-*.dist-info"))
    (info / "direct_url.json").write_text(json.dumps(
        {"url": "file:///root/.apt/market/cache/apt_plugin_tune-9.0.0-py3-none-any.whl", "archive_info": {}}))
    assert not first_party("apt-plugin-tune")
    (info / "direct_url.json").write_text(json.dumps({"url": "file:///src/tune", "dir_info": {"editable": True}}))
    assert first_party("apt-plugin-tune")


def test_prefix_and_spelling(apt_home):
    assert not is_trusted("apt-plugin-lookalike")
    assert is_trusted("APT_Core")
    store = TrustStore()
    assert store.add("My.Plugin") and not store.add("my-plugin")
    assert is_trusted("my_plugin", store)
    assert store.remove("MY_PLUGIN") and not store.remove("my-plugin")
    assert not is_trusted("my-plugin", store)


def test_concurrent_changes_lose_nothing(apt_home):
    names = [f"plugin-{i}" for i in range(16)]
    threads = [threading.Thread(target=TrustStore().add, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert TrustStore().names() == sorted(names)


def test_a_damaged_store_is_one_clear_error(apt_home):
    apt_home.mkdir(parents=True, exist_ok=True)
    (apt_home / "trust.json").write_text("{not json")
    with pytest.raises(AptError, match="trust.json is damaged"):
        TrustStore().names()


def test_the_core_decides_without_apt_sandbox(monkeypatch):
    from apt import jail

    monkeypatch.setitem(sys.modules, "apt_sandbox", None)
    untrusted = [jail.Untrusted("attention.evil", "evil-attention")]
    with pytest.raises(AptError, match="pip install apt-sandbox, or trust it with 'apt market trust evil-attention'"):
        jail.decide("train", untrusted, None)
    assert jail.decide("train", [], None) is False
    with pytest.raises(AptError, match="--no-sandbox: attention.evil from evil-attention is not trusted"):
        jail.decide("train", untrusted, False)
