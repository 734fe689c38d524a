"""The provider conformance suite of apt-core, run against this package's providers."""

from apt.testing import ProviderContract
from apt_plugin_quant.provider import BF16Provider, Int8DynamicProvider


class TestInt8DynamicContract(ProviderContract):
    provider = Int8DynamicProvider


class TestBF16Contract(ProviderContract):
    provider = BF16Provider
