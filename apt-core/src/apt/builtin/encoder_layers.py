"""Bidirectional transformer pieces shared by media encoders and fusion.

Separate from :mod:`apt.builtin.layers` (the causal LM's blocks) because encoders see a whole
image or clip at once and carry biases and activations chosen to load published weights
(CLIP's ``quick_gelu``, SigLIP's tanh GELU, Whisper's GELU).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Activation = Literal["gelu", "gelu_tanh", "quick_gelu"]


def activate(x: torch.Tensor, kind: Activation) -> torch.Tensor:
    if kind == "quick_gelu":
        return x * torch.sigmoid(1.702 * x)
    return F.gelu(x, approximate="tanh" if kind == "gelu_tanh" else "none")


class EncoderBlock(nn.Module):
    """Pre-norm self-attention over all positions, then an MLP: ``(B, N, W) -> (B, N, W)``.

    The query, key and value projections are one ``qkv`` Linear (rows in that order), so weights
    published as three separate projections load by concatenation.
    """

    def __init__(self, width: int, n_head: int, mlp_width: int, *, activation: Activation = "gelu",
                 eps: float = 1e-5, dropout: float = 0.0) -> None:
        super().__init__()
        if width % n_head:
            raise ValueError(f"width {width} is not divisible by n_head {n_head}")
        self.n_head = n_head
        self.activation: Activation = activation
        self.dropout = dropout
        self.ln_1 = nn.LayerNorm(width, eps=eps)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.ln_2 = nn.LayerNorm(width, eps=eps)
        self.fc = nn.Linear(width, mlp_width)
        self.fc_out = nn.Linear(mlp_width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, W = x.shape
        q, k, v = self.qkv(self.ln_1(x)).view(B, N, 3, self.n_head, W // self.n_head).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)  # (B, H, N, D)
        x = x + self.proj(y.transpose(1, 2).reshape(B, N, W))
        return x + self.fc_out(activate(self.fc(self.ln_2(x)), self.activation))


class GatedCrossAttention(nn.Module):
    """Flamingo's gated cross-attention block: text queries attend to media features.

    Both residual branches are scaled by ``tanh(gate)`` with the gates starting at 0, so a model
    that gains this block computes exactly what it computed before until training opens the gates.
    """

    def __init__(self, width: int, n_head: int, mlp_width: int) -> None:
        super().__init__()
        self.n_head = n_head
        self.ln_attn = nn.LayerNorm(width)
        self.q = nn.Linear(width, width, bias=False)
        self.kv = nn.Linear(width, 2 * width, bias=False)
        self.proj = nn.Linear(width, width, bias=False)
        self.ln_ff = nn.LayerNorm(width)
        self.fc = nn.Linear(width, mlp_width, bias=False)
        self.fc_out = nn.Linear(mlp_width, width, bias=False)
        self.gate_attn = nn.Parameter(torch.zeros(1))
        self.gate_ff = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, context: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """``x`` (B, T, C) attends to ``context`` (B, S, C) where ``valid`` (B, S) is True.

        A row with no valid context (a text-only record) attends to its zeros and the whole block's
        contribution is multiplied by 0: the row gets exactly what the text-only model computes
        (also when it shares a batch with media), with finite gradients.
        """
        B, T, C = x.shape
        S = context.shape[1]
        H, D = self.n_head, C // self.n_head
        has_any = valid.any(dim=1)  # (B,)
        mask = (valid | ~has_any[:, None])[:, None, None, :]  # (B, 1, 1, S)
        q = self.q(self.ln_attn(x)).view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        k, v = self.kv(context).view(B, S, 2, H, D).permute(2, 0, 3, 1, 4)  # (B, H, S, D) each
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).reshape(B, T, C)
        keep = has_any[:, None, None].to(x.dtype)  # (B, 1, 1): a text-only row stays the text model's
        x = x + torch.tanh(self.gate_attn) * self.proj(y) * keep
        return x + torch.tanh(self.gate_ff) * self.fc_out(F.gelu(self.fc(self.ln_ff(x)))) * keep
