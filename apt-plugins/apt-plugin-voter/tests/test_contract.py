"""The provider conformance suite of apt-core, run against this package's providers."""

from apt.testing import ProviderContract
from apt_plugin_voter.provider import SelfConsistencyProvider


class TestSelfConsistencyContract(ProviderContract):
    provider = SelfConsistencyProvider
