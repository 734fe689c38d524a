"""Tri-Vein Attention.

Per layer, a projector ``V: d_head -> r`` and its lift ``U: r -> d_head`` are shared by all
heads. Queries, keys and values of every head are projected to the r-dim "vein":
``scores = (V q)(V k)^T / sqrt(r)`` (causal), ``y = U (A V v)``. What the vein cannot carry,
the off-plane part ``v - U V v`` of a value, is compensated through ``s`` normal directions
``N: d_head -> s`` (lifted by ``M: s -> d_head``), but only for tokens whose *relative*
off-plane error ``||v - U V v|| / ||v||`` exceeds ``tau``.

The computation never forms full queries, keys or value outputs. Because every use of q and
k goes through V, ``V W_q`` and ``V W_k`` are folded into one input projection (width
``H (3r + s)`` instead of ``3 d_model``); ``N (I - U V) W_v`` gives the compensation input
directly; ``W_o [U M]`` folds the lift into the output projection (input width ``H (r + s)``).
Both paths share one attention matrix, so they run as a single fused
``scaled_dot_product_attention`` call; queries and keys are zero-padded to the kernel's head
dim, which leaves every score unchanged. The gate is a hard threshold (no gradient), so the
off-plane ratio is computed without autograd.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from apt import LayerCache, ModelDims
from apt_plugin_tva.provider import TVAConfig


def default_kernel_dim(r: int, s: int) -> int:
    """r + s rounded up to a multiple of 16: CPU flash attention vectorises the head dim in 16-float
    lanes, and measured smaller dims run slower there, not faster (GPU kernels need a multiple of 8)."""
    return 16 * math.ceil((r + s) / 16)


class TriVeinAttention(nn.Module):
    def __init__(self, dims: ModelDims, config: TVAConfig) -> None:
        super().__init__()
        self.n_head = dims.n_head
        r, s = config.r, config.s
        self.r, self.s, self.tau = r, s, config.tau
        self.kernel_dim = config.kernel_dim or default_kernel_dim(r, s)
        self.dropout = dims.dropout
        d_head = dims.d_head
        self.qkv = nn.Linear(dims.d_model, 3 * dims.d_model, bias=dims.bias)
        self.proj = nn.Linear(dims.d_model, dims.d_model, bias=dims.bias)
        self.proj.apt_residual = True  # type: ignore[assignment]  # torch types Module attributes as Tensor | Module
        self.resid_dropout = nn.Dropout(dims.dropout)
        self.vein = nn.Parameter(torch.empty(r, d_head))
        self.lift = nn.Parameter(torch.empty(d_head, r))
        self.normal = nn.Parameter(torch.empty(s, d_head))
        self.normal_lift = nn.Parameter(torch.empty(d_head, s))
        self._decoding_fold: tuple[tuple[tuple[int, int], ...], torch.Tensor, torch.Tensor | None, torch.Tensor] | None = None
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
        H, r, s = self.n_head, self.r, self.s
        weight, bias = self._folded_in()
        qr, kr, vr, vn = F.linear(x, weight, bias).split((H * r, H * r, H * r, H * s), dim=-1)
        gate = (self._off_plane_ratio(x) > self.tau).to(vn.dtype).unsqueeze(-1)
        y = _attend(qr, kr, vr, vn, gate, r, s, self.kernel_dim, self.dropout if self.training else 0.0)
        return self.resid_dropout(F.linear(y, self._folded_out(), self.proj.bias))

    def forward_cached(self, x: torch.Tensor, cache: LayerCache) -> torch.Tensor:
        """:class:`apt.SupportsKVCache`: the cache holds the padded vein keys and the gated vein + normal values."""
        H, r, s = self.n_head, self.r, self.s
        weight, bias, out = self._folded_for_decoding()
        qr, kr, vr, vn = F.linear(x, weight, bias).split((H * r, H * r, H * r, H * s), dim=-1)
        gate = (self._off_plane_ratio(x) > self.tau).to(vn.dtype).unsqueeze(-1)
        y = _attend_cached(qr, kr, vr, vn, gate, r, s, self.kernel_dim, cache)
        return self.resid_dropout(F.linear(y, out, self.proj.bias))

    def _folded_for_decoding(self) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """The folded projections, computed once per weight version: folding costs more than a one-token
        step, and decoding runs without autograd, so the folded tensors need no graph back to the weights."""
        if torch.is_grad_enabled():
            weight, bias = self._folded_in()
            return weight, bias, self._folded_out()
        folded = (self.qkv.weight, self.qkv.bias, self.proj.weight, self.vein, self.lift, self.normal, self.normal_lift)
        versions = tuple((p.data_ptr(), p._version) for p in folded if p is not None)
        if self._decoding_fold is None or self._decoding_fold[0] != versions:
            weight, bias = self._folded_in()
            self._decoding_fold = (versions, weight, bias, self._folded_out())
        return self._decoding_fold[1:]

    def _folded_in(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``[V W_q; V W_k; V W_v; N (I - U V) W_v]`` per head: the input projection of width H (3r + s)."""
        C = self.qkv.in_features
        H = self.n_head
        w = self.qkv.weight.view(3, H, C // H, C)
        b = self.qkv.bias.view(3, H, C // H) if self.qkv.bias is not None else None
        off_plane = self.normal - (self.normal @ self.lift) @ self.vein
        maps = (self.vein, self.vein, self.vein, off_plane)
        weight = torch.cat([torch.einsum("kd,hdc->hkc", m, w[min(i, 2)]).reshape(-1, C) for i, m in enumerate(maps)])
        bias = None if b is None else torch.cat([torch.einsum("kd,hd->hk", m, b[min(i, 2)]).reshape(-1)
                                                 for i, m in enumerate(maps)])
        return weight, bias

    def _folded_out(self) -> torch.Tensor:
        """``W_o [U M]`` per head: the output projection of input width H (r + s)."""
        C = self.proj.out_features
        H = self.n_head
        lifts = torch.cat((self.lift, self.normal_lift), dim=1)
        return torch.einsum("chd,dk->chk", self.proj.weight.view(C, H, C // H), lifts).reshape(C, H * (self.r + self.s))

    @torch.no_grad()
    def _off_plane_ratio(self, x: torch.Tensor) -> torch.Tensor:
        C = x.shape[-1]
        v = F.linear(x, self.qkv.weight[2 * C:], None if self.qkv.bias is None else self.qkv.bias[2 * C:])
        return _off_plane_ratio(v, self.n_head, self.vein, self.lift)

    def off_plane_ratio(self, x: torch.Tensor) -> torch.Tensor:
        """Relative off-plane error of every value vector (B, H, T): how much the vein misses."""
        return self._off_plane_ratio(x)

    @torch.no_grad()
    def inference_form(self) -> FoldedTriVein:
        """This layer with its projections folded once into plain ``nn.Linear`` layers (eval mode).

        Same forward and outputs (in eval mode); every large weight sits in a Linear that is called
        as a layer, so weight-rewriting tools (``quant.int8_dynamic``) reach all of them.
        """
        return FoldedTriVein(self)


class FoldedTriVein(nn.Module):
    """The inference form of :class:`TriVeinAttention`: its folded projections as ``nn.Linear`` layers.

    ``in_proj`` (C -> H (3r + s)) holds ``[V W_q; V W_k; V W_v; N (I - U V) W_v]``, ``value`` (C -> C)
    the value rows of ``qkv`` (the gate's value vectors), ``out_proj`` (H (r + s) -> C) holds
    ``W_o [U M]`` and the output bias. ``vein`` and ``lift`` (r x d_head, for the gate) are buffers.
    The weights are computed once, from the layer's parameters when it is built; training goes
    through :class:`TriVeinAttention`.
    """

    vein: torch.Tensor
    lift: torch.Tensor

    def __init__(self, layer: TriVeinAttention) -> None:
        super().__init__()
        C, H, r, s = layer.qkv.in_features, layer.n_head, layer.r, layer.s
        self.n_head, self.r, self.s, self.tau = H, r, s, layer.tau
        self.kernel_dim, self.dropout = layer.kernel_dim, layer.dropout
        bias = layer.qkv.bias is not None
        device, dtype = layer.qkv.weight.device, layer.qkv.weight.dtype
        with torch.no_grad():
            weight, in_bias = layer._folded_in()
            self.in_proj = nn.Linear(C, H * (3 * r + s), bias=bias, device=device, dtype=dtype)
            self.in_proj.weight.copy_(weight)
            self.value = nn.Linear(C, C, bias=bias, device=device, dtype=dtype)
            self.value.weight.copy_(layer.qkv.weight[2 * C:])
            if in_bias is not None:
                self.in_proj.bias.copy_(in_bias)
                self.value.bias.copy_(layer.qkv.bias[2 * C:])
            self.out_proj = nn.Linear(H * (r + s), C, bias=layer.proj.bias is not None, device=device, dtype=dtype)
            self.out_proj.weight.copy_(layer._folded_out())
            if layer.proj.bias is not None:
                self.out_proj.bias.copy_(layer.proj.bias)
        self.register_buffer("vein", layer.vein.detach().clone())
        self.register_buffer("lift", layer.lift.detach().clone())
        self.resid_dropout = nn.Dropout(layer.dropout)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, r, s = self.n_head, self.r, self.s
        qr, kr, vr, vn = self.in_proj(x).split((H * r, H * r, H * r, H * s), dim=-1)
        gate = (self.off_plane_ratio(x) > self.tau).to(vn.dtype).unsqueeze(-1)
        y = _attend(qr, kr, vr, vn, gate, r, s, self.kernel_dim, self.dropout if self.training else 0.0)
        return self.resid_dropout(self.out_proj(y))

    def forward_cached(self, x: torch.Tensor, cache: LayerCache) -> torch.Tensor:
        """:class:`apt.SupportsKVCache`, as :meth:`TriVeinAttention.forward_cached`."""
        H, r, s = self.n_head, self.r, self.s
        qr, kr, vr, vn = self.in_proj(x).split((H * r, H * r, H * r, H * s), dim=-1)
        gate = (self.off_plane_ratio(x) > self.tau).to(vn.dtype).unsqueeze(-1)
        y = _attend_cached(qr, kr, vr, vn, gate, r, s, self.kernel_dim, cache)
        return self.resid_dropout(self.out_proj(y))

    @torch.no_grad()
    def off_plane_ratio(self, x: torch.Tensor) -> torch.Tensor:
        """Relative off-plane error of every value vector (B, H, T), as TriVeinAttention computes it."""
        return _off_plane_ratio(self.value(x), self.n_head, self.vein, self.lift)


def _off_plane_ratio(v: torch.Tensor, n_head: int, vein: torch.Tensor, lift: torch.Tensor) -> torch.Tensor:
    B, T, C = v.shape
    v = v.view(B, T, n_head, C // n_head)
    residual = v - (v @ vein.T) @ lift.T
    return (residual.norm(dim=-1) / v.norm(dim=-1).clamp_min(1e-6)).transpose(1, 2)


def _attend(qr: torch.Tensor, kr: torch.Tensor, vr: torch.Tensor, vn: torch.Tensor, gate: torch.Tensor, r: int,
            s: int, kernel_dim: int, dropout_p: float) -> torch.Tensor:
    """One fused causal attention over the vein (r) and gated normal (s) paths: (B, T, H (r + s))."""
    B, T, _ = qr.shape
    H = gate.shape[1]
    qr, kr, vr = (t.view(B, T, H, r).transpose(1, 2) for t in (qr, kr, vr))
    vn = vn.view(B, T, H, s).transpose(1, 2) * gate
    pad_qk = kernel_dim - r
    y = F.scaled_dot_product_attention(
        F.pad(qr, (0, pad_qk)), F.pad(kr, (0, pad_qk)), F.pad(torch.cat((vr, vn), dim=-1), (0, pad_qk - s)),
        dropout_p=dropout_p, is_causal=True, scale=1.0 / math.sqrt(r))
    return y[..., : r + s].transpose(1, 2).reshape(B, T, H * (r + s))


def _attend_cached(qr: torch.Tensor, kr: torch.Tensor, vr: torch.Tensor, vn: torch.Tensor, gate: torch.Tensor,
                   r: int, s: int, kernel_dim: int, cache: LayerCache) -> torch.Tensor:
    """:func:`_attend` for new positions over the cached ones: the same padded kernel operands, (B, T, H (r + s))."""
    B, T, _ = qr.shape
    H = gate.shape[1]
    qr, kr, vr = (t.view(B, T, H, r).transpose(1, 2) for t in (qr, kr, vr))
    vn = vn.view(B, T, H, s).transpose(1, 2) * gate
    pad_qk = kernel_dim - r
    y = cache.attend(F.pad(qr, (0, pad_qk)), F.pad(kr, (0, pad_qk)),
                     F.pad(torch.cat((vr, vn), dim=-1), (0, pad_qk - s)), scale=1.0 / math.sqrt(r))
    return y[..., : r + s].transpose(1, 2).reshape(B, T, H * (r + s))


def self_test(config: TVAConfig) -> str:
    """Causality and shape check on a tiny layer (run by the sandbox when the plugin is installed)."""
    torch.manual_seed(0)
    dims = ModelDims(n_layer=1, n_head=2, d_model=8 * (config.r + 1), block_size=16, vocab_size=16)
    layer = TriVeinAttention(dims, config).eval()
    x = torch.randn(2, 16, dims.d_model)
    y = layer(x)
    x2 = x.clone()
    x2[:, 8:] += 1.0
    if y.shape != x.shape:
        raise AssertionError(f"output shape {tuple(y.shape)} != input shape {tuple(x.shape)}")
    if not torch.allclose(layer(x2)[:, :8], y[:, :8], atol=1e-5):
        raise AssertionError("output depends on future tokens: the causal mask is broken")
    return "tva: shape and causality ok"
