"""The ``attention.flash_v2`` provider (torch-free: the module is imported by ``build``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from apt import AttentionProvider, ModelDims

if TYPE_CHECKING:
    from torch import nn


class FlashV2Provider(AttentionProvider):
    """FlashAttention-2 on CUDA (flash-attn, else PyTorch's flash backend); the sdpa path elsewhere."""

    name = "flash_v2"

    def build(self, dims: ModelDims, layer: int) -> nn.Module:
        from apt_plugin_flash.attention import FlashAttention

        return FlashAttention(dims)

    def self_test(self) -> str:
        from apt_plugin_flash.selftest import self_test

        return self_test()
