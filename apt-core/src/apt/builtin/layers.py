"""The modules behind the built-in providers."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from apt.kvcache import LayerCache
from apt.providers import ModelDims


class CausalSelfAttention(nn.Module):
    def __init__(self, dims: ModelDims) -> None:
        super().__init__()
        self.n_head = dims.n_head
        self.dropout = dims.dropout
        self.qkv = nn.Linear(dims.d_model, 3 * dims.d_model, bias=dims.bias)
        self.proj = nn.Linear(dims.d_model, dims.d_model, bias=dims.bias)
        self.proj.apt_residual = True  # type: ignore[assignment]  # torch types Module attributes as Tensor | Module
        self.resid_dropout = nn.Dropout(dims.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0,
                                           is_causal=True)
        return self.resid_dropout(self.proj(y.transpose(1, 2).reshape(B, T, C)))

    def forward_cached(self, x: torch.Tensor, cache: LayerCache) -> torch.Tensor:
        """:class:`apt.providers.SupportsKVCache`: ``forward`` at new positions, earlier keys from ``cache``."""
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4)  # (B, H, T, D)
        y = cache.attend(q, k, v)
        return self.resid_dropout(self.proj(y.transpose(1, 2).reshape(B, T, C)))


class DenseFFN(nn.Module):
    def __init__(self, dims: ModelDims, d_ff: int) -> None:
        super().__init__()
        self.fc = nn.Linear(dims.d_model, d_ff, bias=dims.bias)
        self.proj = nn.Linear(d_ff, dims.d_model, bias=dims.bias)
        self.proj.apt_residual = True  # type: ignore[assignment]  # torch types Module attributes as Tensor | Module
        self.dropout = nn.Dropout(dims.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(F.gelu(self.fc(x))))
