"""The ``attention.tva`` provider (torch-free: the module is imported by ``build``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from apt import AttentionProvider, ConfigError, ModelDims, option

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class TVAConfig:
    r: int = option(4, ge=1, doc="rank of the shared vein projector (1 <= r < d_head)")
    s: int = option(1, ge=1, doc="normal directions that compensate off-plane values")
    tau: float = option(0.18, gt=0, doc="relative off-plane error above which compensation switches on")
    kernel_dim: int | None = option(None, ge=1, doc="head dim handed to the fused kernel (zero-padded, exact); "
                                                    "default: r + s rounded up to a multiple of 16")


class TVAProvider(AttentionProvider):
    """Tri-Vein Attention: scores and values through a per-layer rank-r projector shared by all heads."""

    name = "tva"
    Config = TVAConfig

    def check(self, dims: ModelDims) -> None:
        c = self.config
        if not 1 <= c.r < dims.d_head:
            raise ConfigError("r", f"must satisfy 1 <= r < d_head = d_model/n_head = {dims.d_head}, got {c.r}")
        if c.kernel_dim is not None and c.kernel_dim < c.r + c.s:
            raise ConfigError("kernel_dim", f"must be >= r + s = {c.r + c.s}, got {c.kernel_dim}")

    def build(self, dims: ModelDims, layer: int) -> nn.Module:
        from apt_plugin_tva.attention import TriVeinAttention

        return TriVeinAttention(dims, self.config)

    def self_test(self) -> str:
        from apt_plugin_tva.attention import self_test

        return self_test(self.config)
