"""``attention.sdpa`` and ``ffn.dense``: enough to train with no plugin installed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from apt.config import option
from apt.providers import AttentionProvider, FFNProvider, ModelDims

if TYPE_CHECKING:
    from torch import nn


class SDPAProvider(AttentionProvider):
    """Standard causal multi-head attention through ``scaled_dot_product_attention``."""

    name = "sdpa"

    def build(self, dims: ModelDims, layer: int) -> nn.Module:
        from apt.builtin.layers import CausalSelfAttention

        return CausalSelfAttention(dims)


@dataclass(frozen=True)
class DenseConfig:
    mult: int = option(4, ge=1, doc="hidden width as a multiple of d_model")
    d_ff: int | None = option(None, ge=1, doc="hidden width; overrides mult")


class DenseFFNProvider(FFNProvider):
    """GELU MLP."""

    name = "dense"
    Config = DenseConfig

    def build(self, dims: ModelDims, layer: int) -> nn.Module:
        from apt.builtin.layers import DenseFFN

        return DenseFFN(dims, self.config.d_ff or self.config.mult * dims.d_model)
