"""Causal self-attention through the flash kernels, with the parameters of ``attention.sdpa``.

The parameter names and shapes (``qkv``, ``proj``) are those of
:class:`apt.builtin.layers.CausalSelfAttention`, so a checkpoint trained with ``sdpa`` loads into
``flash_v2`` and back. Each forward takes the fastest path its input allows:

- CUDA with flash-attn installed: ``flash_attn_func`` on the (B, T, H, D) layout the projection
  already produces, so no transpose is materialised;
- CUDA without it: ``scaled_dot_product_attention`` restricted to PyTorch's flash backend;
- anything else (CPU, fp32, unsupported head dim or GPU): the plain ``sdpa`` computation, with
  one warning per process naming what is missing.

Incremental decoding (:class:`apt.SupportsKVCache`) is ``sdpa``'s cached path; on a GPU the flash
kernels allow, it prefers PyTorch's flash backend, which takes the steps that need no mask (an
unpadded prefill, a step whose rows share one length) and leaves masked ones to the next backend.
"""

from __future__ import annotations

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from apt import CausalSelfAttention, LayerCache
from apt_plugin_flash.kernels import flash_blocker, load_flash_attn, warn_once


class FlashAttention(CausalSelfAttention):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        device = x.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
        blocker = flash_blocker(x.device, dtype, C // self.n_head)
        if blocker is not None:
            warn_once(blocker)
            return super().forward(x)
        kernel = load_flash_attn()
        if kernel is None:
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                return super().forward(x)
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, C // self.n_head).unbind(2)
        y = kernel(q, k, v, dropout_p=self.dropout if self.training else 0.0, causal=True).reshape(B, T, C)
        return self.resid_dropout(self.proj(y))

    def forward_cached(self, x: torch.Tensor, cache: LayerCache) -> torch.Tensor:
        B, T, C = x.shape
        device = x.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
        blocker = flash_blocker(x.device, dtype, C // self.n_head)
        if blocker is not None:
            warn_once(blocker)
            return super().forward_cached(x, cache)
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH],
                         set_priority=True):
            return super().forward_cached(x, cache)
