"""A tiny encoder for the core's multimodal tests: an "image" is a text file of four numbers."""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import EntryPoint
from pathlib import Path

import torch
from torch import nn

from apt import AptError, EncoderProvider, ModelDims, option
from apt.registry import GROUP, Registry
from apt.testing.contract import _BUILTINS


@dataclass(frozen=True)
class TinyConfig:
    tokens: int = option(3, ge=1, le=16, doc="feature vectors per item")


class TinyEncoder(EncoderProvider):
    name = "tiny"
    modality = "image"
    Config = TinyConfig

    def tokens(self) -> int:
        return int(self.config.tokens)

    def load(self, path: Path) -> torch.Tensor:
        try:
            values = [float(v) for v in path.read_text().split()]
        except (OSError, UnicodeDecodeError, ValueError) as err:
            raise AptError(f"cannot read image: {type(err).__name__}") from None
        if len(values) != 4:
            raise AptError(f"cannot read image: expected 4 numbers, got {len(values)}")
        return torch.tensor(values)

    def build(self, dims: ModelDims) -> nn.Module:
        return TinyModule(self.config.tokens, dims.d_model)


class TinyModule(nn.Module):
    def __init__(self, tokens: int, width: int) -> None:
        super().__init__()
        self.n_tokens, self.d_out = tokens, width
        self.proj = nn.Linear(4, tokens * width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).view(x.shape[0], self.n_tokens, self.d_out)  # (M, 4) -> (M, N, W)


def registry() -> Registry:
    entries = {**_BUILTINS, "encoder.tiny": "media_fixtures:TinyEncoder"}
    return Registry([EntryPoint(name, value, GROUP) for name, value in entries.items()])
