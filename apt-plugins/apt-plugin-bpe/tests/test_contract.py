"""The provider conformance suite of apt-core, run against tokenizer.bpe trained and loaded from disk."""

from apt.testing import ProviderContract
from apt_plugin_bpe.provider import BPEProvider


class TestBPEContract(ProviderContract):
    provider = BPEProvider
