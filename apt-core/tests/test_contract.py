"""The conformance suite itself: it passes the built-ins and catches each broken promise it names."""

from __future__ import annotations

import textwrap

import pytest

from apt.builtin.providers import DenseFFNProvider, SDPAProvider
from apt.testing import ProviderContract, check_provider, contract

HEADER = """
from dataclasses import dataclass

from apt import AttentionProvider, FFNProvider, option
"""

MODULES = {
    "peeks": """
class PeekingAttention(AttentionProvider):
    name = "peeks"

    def build(self, dims, layer):
        import torch.nn.functional as F
        from torch import nn

        class Peek(nn.Module):
            def __init__(self):
                super().__init__()
                self.qkv = nn.Linear(dims.d_model, 3 * dims.d_model)

            def forward(self, x):
                q, k, v = self.qkv(x).chunk(3, dim=-1)
                return F.scaled_dot_product_attention(q, k, v)  # no causal mask

        return Peek()
""",
    "heavy": """
import torch


class Heavy(FFNProvider):
    name = "heavy"

    def build(self, dims, layer):
        return torch.nn.Identity()
""",
    "undocumented": """
@dataclass(frozen=True)
class LooseConfig:
    width: int = 4


class Loose(FFNProvider):
    name = "loose"
    Config = LooseConfig

    def build(self, dims, layer):
        from torch import nn

        return nn.Linear(dims.d_model, dims.d_model)
""",
    "unbounded": """
@dataclass(frozen=True)
class UnboundedConfig:
    width: int = option(4, doc="no bounds")


class Unbounded(FFNProvider):
    name = "unbounded"
    Config = UnboundedConfig

    def build(self, dims, layer):
        from torch import nn

        return nn.Linear(dims.d_model, dims.d_model)
""",
    "noswitch": """
class NoSwitch(FFNProvider):
    name = "noswitch"
    switch = "late"

    def build(self, dims, layer):
        from torch import nn

        return nn.Linear(dims.d_model, dims.d_model)
""",
    "random": """
class RandomInit(FFNProvider):
    name = "random"

    def build(self, dims, layer):
        import os

        import torch
        from torch import nn

        layer = nn.Linear(dims.d_model, dims.d_model)
        with torch.no_grad():
            layer.weight.copy_(torch.from_numpy(__import__("numpy").frombuffer(os.urandom(
                4 * layer.weight.numel()), dtype="int32").reshape(layer.weight.shape) % 7).float())
        return layer
""",
    "badform": """
class BadForm(FFNProvider):
    name = "badform"

    def build(self, dims, layer):
        from torch import nn

        class WithForm(nn.Linear):
            def inference_form(self):
                return nn.Linear(self.in_features, self.out_features)

        return WithForm(dims.d_model, dims.d_model)
""",
    "shape": """
class WrongShape(FFNProvider):
    name = "shape"

    def build(self, dims, layer):
        from torch import nn

        return nn.Linear(dims.d_model, dims.d_model + 1)
""",
}


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """Import class ``attr`` from one of MODULES, written to a package on sys.path."""
    package = tmp_path / "contract_fakes"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for name, body in MODULES.items():
        (package / f"{name}.py").write_text(textwrap.dedent(HEADER + body))
    monkeypatch.syspath_prepend(str(tmp_path))

    def load(module: str, attr: str) -> type:
        import importlib

        return getattr(importlib.import_module(f"contract_fakes.{module}"), attr)

    return load


class TestSDPAContract(ProviderContract):
    provider = SDPAProvider


class TestDenseContract(ProviderContract):
    provider = DenseFFNProvider

    @pytest.fixture
    def provider_options(self):
        return {"mult": 2}


def test_check_provider_runs_every_check_on_a_builtin():
    check_provider(DenseFFNProvider, {"d_ff": 24})


def test_attention_that_looks_ahead_is_caught(fake):
    with pytest.raises(AssertionError, match="changing tokens after position 0 changes the output"):
        contract.check_modules(fake("peeks", "PeekingAttention"))


def test_module_level_torch_import_is_caught(fake):
    with pytest.raises(AssertionError, match="contract_fakes.heavy imports torch"):
        contract.check_torch_free_import(fake("heavy", "Heavy"))
    contract.check_torch_free_import(fake("noswitch", "NoSwitch"))


def test_config_fields_need_defaults_docs_and_bounds(fake):
    with pytest.raises(AssertionError, match=r"LooseConfig\.width|Config\.width has no doc"):
        contract.check_config_fields(fake("undocumented", "Loose"))
    with pytest.raises(AssertionError, match="is numeric but declares no bounds"):
        contract.check_config_fields(fake("unbounded", "Unbounded"))


def test_declared_switch_needs_a_switchable_module(fake):
    with pytest.raises(AssertionError, match="declares switch 'late' but its module has no 'enabled'"):
        contract.check_modules(fake("noswitch", "NoSwitch"))


def test_builds_must_be_deterministic_under_a_seed(fake):
    with pytest.raises(AssertionError, match="two builds under one seed differ"):
        contract.check_modules(fake("random", "RandomInit"))


def test_inference_form_must_match_forward(fake):
    with pytest.raises(AssertionError, match=r"inference_form\(\) does not match forward"):
        contract.check_modules(fake("badform", "BadForm"))


def test_output_shape_must_match_input(fake):
    with pytest.raises(AssertionError, match="expected the same shape"):
        contract.check_modules(fake("shape", "WrongShape"))


def test_declaration_errors_are_the_registry_s_own(fake):
    bad = type("Misnamed", (DenseFFNProvider,), {"name": "Not-An-Identifier"})
    with pytest.raises(AssertionError, match="must be a lower-case identifier"):
        contract.check_declaration(bad)
    wrong = type("Wrong", (), {"kind": "ffn", "name": "wrong"})
    with pytest.raises(AssertionError, match="not a subclass of apt.providers.FFNProvider"):
        contract.check_declaration(wrong)
