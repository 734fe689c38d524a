"""The provider conformance suite of apt-core, run against this package's providers."""

from pathlib import Path

import pytest

from apt.testing import ProviderContract
from apt_plugin_retriever.provider import Bm25Provider, DenseProvider


class TestBm25Contract(ProviderContract):
    provider = Bm25Provider


class TestDenseContract(ProviderContract):
    provider = DenseProvider

    @pytest.fixture
    def provider_options(self, tiny_bert: Path) -> dict[str, str]:
        return {"embedding_model": str(tiny_bert)}
