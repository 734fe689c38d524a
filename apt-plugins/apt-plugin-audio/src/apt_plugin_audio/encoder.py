"""The ``encoder.logmel_conv`` module: Whisper's encoder, sized by the config, with pooled output.

The layer layout and names follow Whisper's (conv stem, positions, pre-norm blocks, final norm)
so a published Whisper encoder loads by renaming alone (:mod:`apt_plugin_audio.pretrained`);
pooling comes after the final norm, so with ``pool=1`` the output is Whisper's own.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from apt import EncoderBlock
from apt_plugin_audio.provider import conv_positions


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> torch.Tensor:
    """Whisper's (length, channels) position table: sines then cosines over geometric timescales."""
    half = channels // 2
    increment = math.log(max_timescale) / (half - 1)
    inv_timescales = torch.exp(-increment * torch.arange(half, dtype=torch.float32))  # (half,)
    scaled = torch.arange(length, dtype=torch.float32)[:, None] * inv_timescales[None, :]  # (length, half)
    return torch.cat([torch.sin(scaled), torch.cos(scaled)], dim=1)


class LogMelConvEncoder(nn.Module):
    """``(M, n_mels, frames) -> (M, n_tokens, width)`` with ``n_tokens = ceil(frames / 2) // pool``."""

    def __init__(self, n_mels: int, frames: int, width: int, layers: int, heads: int, mlp_width: int, pool: int,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.n_mels = n_mels
        self.frames = frames
        self.pool = pool
        positions = conv_positions(frames)
        self.n_tokens = positions // pool
        self.d_out = width
        self.conv1 = nn.Conv1d(n_mels, width, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(width, width, kernel_size=3, stride=2, padding=1)
        # Learned, so a small model can adapt them; Whisper's fixed table is a good start.
        self.positions = nn.Parameter(sinusoids(positions, width))
        self.blocks = nn.ModuleList(EncoderBlock(width, heads, mlp_width, activation="gelu", dropout=dropout)
                                    for _ in range(layers))
        self.ln_post = nn.LayerNorm(width)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.conv1(inputs))  # (M, W, frames)
        x = F.gelu(self.conv2(x))  # (M, W, P)
        x = x.transpose(1, 2) + self.positions  # (M, P, W)
        for block in self.blocks:
            x = block(x)
        x = self.ln_post(x)  # (M, P, W)
        if self.pool > 1:
            # avg_pool1d drops the last P % pool positions, as n_tokens promised.
            x = F.avg_pool1d(x.transpose(1, 2), self.pool).transpose(1, 2)  # (M, P // pool, W)
        return x
