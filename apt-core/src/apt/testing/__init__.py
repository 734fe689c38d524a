"""Test helpers for provider authors: the conformance suite, a pytest plugin and fake distributions.

In a plugin's tests::

    from apt.testing import ProviderContract
    from apt_plugin_geglu.provider import GegluProvider

    class TestGeglu(ProviderContract):
        provider = GegluProvider

runs every check of :mod:`apt.testing.contract` as its own test. The pytest plugin (entry point
``pytest11``, loaded automatically wherever apt-core is installed) adds the ``apt_home`` fixture.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from apt.testing.distribution import make_distribution

__all__ = ["DIMS", "ProviderContract", "check_kv_cache", "check_provider", "make_distribution", "tiny_model"]


def __getattr__(name: str) -> Any:
    # Lazy: the contract imports the registry and ProviderContract imports pytest.
    if name in ("DIMS", "check_kv_cache", "check_provider", "tiny_model"):
        from apt.testing import contract

        return getattr(contract, name)
    if name == "ProviderContract":
        from apt.testing.pytest_plugin import ProviderContract

        return ProviderContract
    raise AttributeError(f"module 'apt.testing' has no attribute {name!r}")


if TYPE_CHECKING:
    from apt.testing.contract import DIMS, check_kv_cache, check_provider, tiny_model
    from apt.testing.pytest_plugin import ProviderContract
