"""pytest plugin ``apt`` (entry point ``pytest11``): fixtures and the class-based conformance suite."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import pytest

from apt.providers import Provider
from apt.testing import contract


@pytest.fixture
def apt_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private ``APT_HOME`` for one test: caches, the error store and client state start empty."""
    home = tmp_path / "apt_home"
    monkeypatch.setenv("APT_HOME", str(home))
    return home


@pytest.fixture
def apt_env(apt_home: Path) -> dict[str, str]:
    """The environment for ``apt`` subprocesses of one test: its private ``APT_HOME``, unbuffered
    output, offline Hugging Face libraries, and no inherited ``PYTHONPATH`` (the installed packages
    are what runs)."""
    env = dict(os.environ)
    env.update(APT_HOME=str(apt_home), PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1")
    env.pop("PYTHONPATH", None)
    return env


class ProviderContract:
    """Subclass with ``provider = YourProvider`` to run the conformance suite, one test per promise.

    Override the ``provider_options`` fixture to configure the provider as a profile would (it
    may use other fixtures, e.g. a model directory made in ``tmp_path``).
    """

    provider: ClassVar[type[Provider]]

    @pytest.fixture
    def provider_options(self) -> Mapping[str, Any]:
        return {}

    @pytest.fixture
    def media_sample(self) -> Path | None:
        """An encoder's test returns a file of its modality here (a PNG, a WAV) to load and encode."""
        return None

    def test_imports_without_torch(self) -> None:
        contract.check_torch_free_import(self.provider)

    def test_declaration(self) -> None:
        contract.check_declaration(self.provider)

    def test_config_fields(self) -> None:
        contract.check_config_fields(self.provider)

    def test_self_test(self, provider_options: Mapping[str, Any]) -> None:
        contract.check_self_test(self.provider, provider_options)

    def test_behaviour(self, provider_options: Mapping[str, Any], media_sample: Path | None) -> None:
        contract.check_behaviour(self.provider, provider_options, media_sample=media_sample)

    def test_trains(self, provider_options: Mapping[str, Any], media_sample: Path | None) -> None:
        if self.provider.kind not in contract.TRAINED_KINDS:
            pytest.skip(f"{self.provider.kind} providers take no part in training")
        contract.check_trains(self.provider, provider_options, media_sample=media_sample)
