"""The provider conformance suite of apt-core, run against this package's providers."""

from apt.testing import ProviderContract
from apt_plugin_flash.provider import FlashV2Provider


class TestFlashV2Contract(ProviderContract):
    provider = FlashV2Provider
