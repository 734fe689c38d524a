"""The ViT module behind ``encoder.vit``.

Its parameters are laid out so that a Hugging Face CLIP or SigLIP vision tower maps onto them
one tensor per tensor (see :mod:`apt_plugin_vision.pretrained`): the two families differ only in
a patch bias, a LayerNorm before the blocks (CLIP) and one after them (SigLIP), which are
switches here rather than two classes so that checkpoints of either load into the same module.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from apt import EncoderBlock

Activation = Literal["gelu", "gelu_tanh", "quick_gelu"]


class ViT(nn.Module):
    """Images ``(M, C, H, W)`` -> features ``(M, n_tokens, d_out)``, one per patch (plus a class token)."""

    def __init__(self, *, image_size: int, patch_size: int, channels: int, width: int, layers: int, heads: int,
                 mlp_width: int, class_token: bool, patch_bias: bool, pre_norm: bool, final_norm: bool,
                 activation: Activation = "gelu", eps: float = 1e-6) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"patch_size {patch_size} does not divide image_size {image_size}")
        grid = image_size // patch_size
        self.image_size = image_size
        self.channels = channels
        self.n_tokens = grid * grid + int(class_token)
        self.d_out = width
        self.patch = nn.Conv2d(channels, width, kernel_size=patch_size, stride=patch_size, bias=patch_bias)
        # Small random starts (ViT's 0.02) so that positions and the class token are distinguishable from step 0.
        self.cls = nn.Parameter(torch.randn(width) * 0.02) if class_token else None
        self.pos = nn.Parameter(torch.randn(self.n_tokens, width) * 0.02)
        self.pre_norm: nn.Module = nn.LayerNorm(width, eps=eps) if pre_norm else nn.Identity()
        self.blocks = nn.ModuleList(EncoderBlock(width, heads, mlp_width, activation=activation, eps=eps)
                                    for _ in range(layers))
        self.norm: nn.Module = nn.LayerNorm(width, eps=eps) if final_norm else nn.Identity()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        expected = (self.channels, self.image_size, self.image_size)
        if tuple(images.shape[1:]) != expected:
            # The position table fixes the grid: another size would fail later with an opaque broadcast error.
            raise ValueError(f"ViT expects images of shape (M, {', '.join(map(str, expected))}), "
                             f"got {tuple(images.shape)}")
        x = self.patch(images)  # (M, W, H/p, W/p)
        x = x.flatten(2).transpose(1, 2)  # (M, N, W): patches in row-major order, as CLIP and SigLIP number them
        if self.cls is not None:
            cls = self.cls.to(x.dtype).expand(x.shape[0], 1, -1)  # (M, 1, W)
            x = torch.cat([cls, x], dim=1)  # (M, 1 + N, W)
        x = self.pre_norm(x + self.pos.to(x.dtype))  # (M, n_tokens, W)
        for block in self.blocks:
            x = block(x)  # (M, n_tokens, W)
        out: torch.Tensor = self.norm(x)  # (M, n_tokens, W)
        return out
