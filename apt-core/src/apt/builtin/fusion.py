"""``fusion.prefix`` and ``fusion.xattn``: how encoder features reach the language model.

Built into the core, like ``attention.sdpa``: a profile with ``model.encoders`` needs some fusion,
the two here need nothing beyond torch, and the batch layout they define (:meth:`slots`) is
what the core's multimodal collate writes. Other fusions plug in as ``fusion.<name>`` providers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from apt.config import option
from apt.providers import FusionProvider, ModelDims

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class PrefixConfig:
    mlp_mult: int = option(1, ge=1, doc="hidden width of the two-layer GELU projector, as a multiple of d_model")


class PrefixFusionProvider(FusionProvider):
    """nanoVLM / LLaVA: a projector maps each feature vector to one token embedding, placed in slots
    at the start of the record's row; the LM attends to them like to any earlier token."""

    name = "prefix"
    Config = PrefixConfig
    switch = "fusion"

    def slots(self, modality: str, n_tokens: int) -> int:
        return n_tokens

    def build(self, dims: ModelDims, encoders: dict[str, tuple[int, int]]) -> nn.Module:
        from apt.builtin.fusion_layers import PrefixFusion

        return PrefixFusion(dims, encoders, self.config)


@dataclass(frozen=True)
class XAttnConfig:
    every: int = option(1, ge=1, doc="a gated cross-attention block after every N-th LM block")
    mlp_mult: int = option(4, ge=1, doc="hidden width of the gated MLP, as a multiple of d_model")


class XAttnFusionProvider(FusionProvider):
    """Flamingo: gated cross-attention blocks between the LM's blocks; the text takes no slots, and
    with the gates at 0 (their initial value) the LM's output is exactly the text-only one."""

    name = "xattn"
    Config = XAttnConfig
    switch = "fusion"

    def slots(self, modality: str, n_tokens: int) -> int:
        return 0

    def check(self, dims: ModelDims) -> None:
        from apt.config import require

        require(self.config.every <= dims.n_layer, "every",
                f"must be <= model.n_layer ({dims.n_layer}), or no block would get cross-attention")

    def build(self, dims: ModelDims, encoders: dict[str, tuple[int, int]]) -> nn.Module:
        from apt.builtin.fusion_layers import CrossAttentionFusion

        return CrossAttentionFusion(dims, encoders, self.config)
