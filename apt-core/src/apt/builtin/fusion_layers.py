"""The modules behind ``fusion.prefix`` and ``fusion.xattn`` (:class:`apt.providers.Fusion`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from apt.batch import Media
from apt.builtin.encoder_layers import GatedCrossAttention
from apt.providers import ModelDims

if TYPE_CHECKING:
    from apt.builtin.fusion import PrefixConfig, XAttnConfig


class PrefixFusion(nn.Module):
    def __init__(self, dims: ModelDims, encoders: dict[str, tuple[int, int]], config: PrefixConfig) -> None:
        super().__init__()
        hidden = config.mlp_mult * dims.d_model
        self.projectors = nn.ModuleDict({
            modality: nn.Sequential(nn.Linear(d_out, hidden), nn.GELU(), nn.Linear(hidden, dims.d_model))
            for modality, (_, d_out) in encoders.items()})
        #: Curriculum switch "fusion": while off, the slots keep their placeholder embeddings.
        self.enabled = True

    def inject(self, embeddings: torch.Tensor, media: Media) -> torch.Tensor:
        if not self.enabled:
            return embeddings
        for modality, features in media.features.items():
            projected = self.projectors[modality](features).to(embeddings.dtype)  # (M, N, C)
            M, N, _ = projected.shape
            rows = media.rows[modality][:, None].expand(M, N)
            cols = media.starts[modality][:, None] + torch.arange(N, device=projected.device)  # (M, N)
            embeddings = embeddings.index_put((rows, cols), projected)
        return embeddings

    def after_block(self, layer: int, x: torch.Tensor, media: Media) -> torch.Tensor:
        return x


class CrossAttentionFusion(nn.Module):
    def __init__(self, dims: ModelDims, encoders: dict[str, tuple[int, int]], config: XAttnConfig) -> None:
        super().__init__()
        self.projectors = nn.ModuleDict({modality: nn.Linear(d_out, dims.d_model)
                                         for modality, (_, d_out) in encoders.items()})
        self.blocks = nn.ModuleDict({
            str(layer): GatedCrossAttention(dims.d_model, dims.n_head, config.mlp_mult * dims.d_model)
            for layer in range(dims.n_layer) if (layer + 1) % config.every == 0})
        #: Curriculum switch "fusion": while off, no block cross-attends.
        self.enabled = True

    def inject(self, embeddings: torch.Tensor, media: Media) -> torch.Tensor:
        return embeddings

    def after_block(self, layer: int, x: torch.Tensor, media: Media) -> torch.Tensor:
        block = self.blocks[str(layer)] if self.enabled and str(layer) in self.blocks else None
        if block is None or not media.features:
            return x
        context, valid = self.context(media, x.shape[0], x.dtype)
        return block(x, context, valid)

    def context(self, media: Media, batch: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Every row's projected media features side by side (B, S, C), and which are real (B, S)."""
        parts, masks = [], []
        for modality, features in media.features.items():
            projected = self.projectors[modality](features).to(dtype)  # (M, N, C)
            M, N, C = projected.shape
            rows = media.rows[modality]
            part = projected.new_zeros(batch, N, C).index_put((rows,), projected)
            valid = torch.zeros(batch, N, dtype=torch.bool, device=projected.device)
            valid[rows] = True
            parts.append(part)
            masks.append(valid)
        return torch.cat(parts, dim=1), torch.cat(masks, dim=1)
