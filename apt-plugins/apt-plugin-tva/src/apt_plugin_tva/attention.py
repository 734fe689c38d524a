"""Tri-Vein Attention.

Per layer, a projector ``V: d_head -> r`` and its lift ``U: r -> d_head`` are shared by all
heads. Queries, keys and values of every head are projected to the r-dim "vein":
``scores = (V q)(V k)^T / sqrt(r)`` (causal), ``y = U (A V v)``. What the vein cannot carry,
the off-plane part ``v - U V v`` of a value, is compensated through ``s`` normal directions
``N: d_head -> s`` (lifted by ``M: s -> d_head``), but only for tokens whose *relative*
off-plane error ``||v - U V v|| / ||v||`` exceeds ``tau``.

Both paths share one attention matrix, so they run as a single fused
``scaled_dot_product_attention`` call on values ``[V v, gate * N(v - U V v)]``; queries and
keys are zero-padded to the kernel's head dim, which leaves every score unchanged.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from apt.providers import ModelDims


class TriVeinAttention(nn.Module):
    def __init__(self, dims: ModelDims, r: int, s: int, tau: float, kernel_dim: int | None = None) -> None:
        super().__init__()
        self.n_head = dims.n_head
        self.r, self.s, self.tau = r, s, tau
        self.kernel_dim = kernel_dim or 8 * math.ceil((r + s) / 8)
        self.dropout = dims.dropout
        d_head = dims.d_head
        self.qkv = nn.Linear(dims.d_model, 3 * dims.d_model, bias=dims.bias)
        self.proj = nn.Linear(dims.d_model, dims.d_model, bias=dims.bias)
        self.proj.apt_residual = True
        self.resid_dropout = nn.Dropout(dims.dropout)
        self.vein = nn.Parameter(torch.empty(r, d_head))
        self.lift = nn.Parameter(torch.empty(d_head, r))
        self.normal = nn.Parameter(torch.empty(s, d_head))
        self.normal_lift = nn.Parameter(torch.empty(d_head, s))
        self.reset_veins()

    @torch.no_grad()
    def reset_veins(self) -> None:
        """Start from an orthonormal frame: U V is a projector and N spans off-plane directions."""
        d_head = self.vein.shape[1]
        basis = torch.linalg.qr(torch.randn(d_head, d_head))[0]
        self.vein.copy_(basis[:, : self.r].T)
        self.lift.copy_(basis[:, : self.r])
        k = min(self.s, d_head - self.r)
        self.normal.zero_()
        self.normal_lift.zero_()
        self.normal[:k].copy_(basis[:, self.r : self.r + k].T)
        self.normal_lift[:, :k].copy_(basis[:, self.r : self.r + k])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4)
        qr, kr, vr = (t @ self.vein.T for t in (q, k, v))
        off_plane = v - vr @ self.lift.T
        ratio = off_plane.norm(dim=-1) / v.norm(dim=-1).clamp_min(1e-6)
        gate = (ratio > self.tau).to(v.dtype).unsqueeze(-1)
        vn = (off_plane @ self.normal.T) * gate
        pad_qk = self.kernel_dim - self.r
        pad_v = self.kernel_dim - self.r - self.s
        y = F.scaled_dot_product_attention(
            F.pad(qr, (0, pad_qk)), F.pad(kr, (0, pad_qk)), F.pad(torch.cat((vr, vn), dim=-1), (0, pad_v)),
            dropout_p=self.dropout if self.training else 0.0, is_causal=True, scale=1.0 / math.sqrt(self.r))
        out = y[..., : self.r] @ self.lift.T + y[..., self.r : self.r + self.s] @ self.normal_lift.T
        return self.resid_dropout(self.proj(out.transpose(1, 2).reshape(B, T, C)))

    def off_plane_ratio(self, x: torch.Tensor) -> torch.Tensor:
        """Relative off-plane error of every value vector (B, H, T): how much the vein misses."""
        B, T, C = x.shape
        v = self.qkv(x).view(B, T, 3, self.n_head, C // self.n_head)[:, :, 2].transpose(1, 2)
        return (v - v @ self.vein.T @ self.lift.T).norm(dim=-1) / v.norm(dim=-1).clamp_min(1e-6)


def self_test(config: Any) -> str:
    """Causality and shape check on a tiny layer (run by the sandbox when the plugin is installed)."""
    torch.manual_seed(0)
    dims = ModelDims(n_layer=1, n_head=2, d_model=8 * (config.r + 1), block_size=16, vocab_size=16)
    layer = TriVeinAttention(dims, config.r, config.s, config.tau, config.kernel_dim).eval()
    x = torch.randn(2, 16, dims.d_model)
    y = layer(x)
    x2 = x.clone()
    x2[:, 8:] += 1.0
    if y.shape != x.shape:
        raise AssertionError(f"output shape {tuple(y.shape)} != input shape {tuple(x.shape)}")
    if not torch.allclose(layer(x2)[:, :8], y[:, :8], atol=1e-5):
        raise AssertionError("output depends on future tokens: the causal mask is broken")
    return "tva: shape and causality ok"
