"""Causal self-attention through the flash kernels, with the parameters of ``attention.sdpa``.

The parameter names and shapes (``qkv``, ``proj``) are those of
:class:`apt.builtin.layers.CausalSelfAttention`, so a checkpoint trained with ``sdpa`` loads into
``flash_v2`` and back. Each forward takes the fastest path its input allows:

- CUDA with flash-attn installed: ``flash_attn_func`` on the (B, T, H, D) layout the projection
  already produces, so no transpose is materialised;
- CUDA without it: ``scaled_dot_product_attention`` restricted to PyTorch's flash backend;
- anything else (CPU, fp32, unsupported head dim or GPU): the plain ``sdpa`` computation, with
  one warning per process naming what is missing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from apt.providers import ModelDims
from apt_plugin_flash.kernels import flash_blocker, load_flash_attn, warn_once


class FlashAttention(nn.Module):
    def __init__(self, dims: ModelDims) -> None:
        super().__init__()
        self.n_head = dims.n_head
        self.dropout = dims.dropout
        self.qkv = nn.Linear(dims.d_model, 3 * dims.d_model, bias=dims.bias)
        self.proj = nn.Linear(dims.d_model, dims.d_model, bias=dims.bias)
        self.proj.apt_residual = True
        self.resid_dropout = nn.Dropout(dims.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        qkv = self.qkv(x).view(B, T, 3, self.n_head, C // self.n_head)
        dropout = self.dropout if self.training else 0.0
        blocker = flash_blocker(qkv)
        if blocker is not None:
            warn_once(blocker)
            y = _sdpa(qkv, dropout)
        else:
            kernel = load_flash_attn()
            if kernel is not None:
                q, k, v = qkv.unbind(2)
                y = kernel(q, k, v, dropout_p=dropout, causal=True).reshape(B, T, C)
            else:
                with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                    y = _sdpa(qkv, dropout)
        return self.resid_dropout(self.proj(y))


def _sdpa(qkv: torch.Tensor, dropout: float) -> torch.Tensor:
    B, T, _, H, D = qkv.shape
    q, k, v = qkv.permute(2, 0, 3, 1, 4)
    y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
    return y.transpose(1, 2).reshape(B, T, H * D)
