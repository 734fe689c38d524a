"""The provider conformance suite of apt-core, run against this package's providers."""

from apt.testing import ProviderContract
from apt_plugin_align.provider import BistateProvider


class TestBistateContract(ProviderContract):
    provider = BistateProvider
