"""The encoder.vit provider (torch and Pillow are imported only when an image is read or a module built)."""

from __future__ import annotations

import dataclasses
import io
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from apt import EncoderProvider, ModelDims, option, require

if TYPE_CHECKING:
    import torch
    from torch import nn

Activation = Literal["gelu", "gelu_tanh", "quick_gelu"]
Layout = Literal["siglip", "clip"]

#: What each published family puts around the blocks; the LayerNorm epsilon follows its weights.
LAYOUTS: dict[str, dict[str, Any]] = {
    "siglip": {"patch_bias": True, "pre_norm": False, "final_norm": True, "eps": 1e-6},
    "clip": {"patch_bias": False, "pre_norm": True, "final_norm": False, "eps": 1e-5},
}


@dataclass(frozen=True)
class ViTConfig:
    image_size: int = option(16, ge=1, le=4096, doc="side in pixels every image is resized to (square)")
    patch_size: int = option(4, ge=1, le=4096, doc="side of the square patches that become tokens; must divide "
                                                   "image_size")
    channels: int = option(1, ge=1, le=3, doc="1 (grayscale) or 3 (RGB): what every image is converted to")
    width: int | None = option(None, ge=1, le=1 << 16, doc="feature size; null: the language model's d_model")
    layers: int = option(2, ge=1, le=256, doc="transformer blocks")
    heads: int = option(2, ge=1, le=256, doc="attention heads per block; must divide width")
    mlp_mult: int = option(4, ge=1, le=64, doc="MLP hidden units per unit of width")
    mlp_width: int | None = option(None, ge=1, le=1 << 20, doc="MLP hidden units, overriding mlp_mult (SigLIP "
                                                               "so400m has 4304 for width 1152)")
    class_token: bool = option(False, doc="prepend a learned class token (CLIP has one, SigLIP does not)")
    layout: Layout = option("siglip", doc="siglip: patch bias and a final LayerNorm; clip: a LayerNorm before the "
                                          "blocks and none after (the output is CLIP's last_hidden_state)")
    activation: Activation = option("gelu", doc="MLP activation: gelu, gelu_tanh (SigLIP) or quick_gelu (CLIP)")
    mean: float = option(0.5, ge=0.0, le=1.0, doc="subtracted from pixel values in [0, 1]")
    std: float = option(0.5, gt=0.0, le=10.0, doc="pixel values are divided by it after subtracting mean")
    pretrained: str | None = option(None, doc="folder of a Hugging Face CLIP or SigLIP vision model (config.json "
                                              "and model.safetensors) whose weights start a new run")


class ViTProvider(EncoderProvider):
    """A Vision Transformer over square images: trained from scratch, or started from a published
    CLIP or SigLIP vision tower read offline from a folder on disk."""

    name = "vit"
    modality = "image"
    Config = ViTConfig

    def check(self, dims: ModelDims) -> None:
        c = self.config
        require(c.image_size % c.patch_size == 0, "patch_size",
                f"must divide image_size {c.image_size}, got {c.patch_size}")
        require(c.channels in (1, 3), "channels", f"expected 1 (grayscale) or 3 (RGB), got {c.channels}")
        width = self.width(dims)
        require(width % c.heads == 0, "heads", f"must divide the encoder width {width}, got {c.heads}")

    def width(self, dims: ModelDims) -> int:
        return int(self.config.width if self.config.width is not None else dims.d_model)

    def mlp_width(self, width: int) -> int:
        return int(self.config.mlp_width if self.config.mlp_width is not None else self.config.mlp_mult * width)

    def tokens(self) -> int:
        grid = int(self.config.image_size // self.config.patch_size)
        return grid * grid + int(self.config.class_token)

    def load(self, path: Path) -> torch.Tensor:
        from apt_plugin_vision.image import load_image

        c = self.config
        return load_image(path, size=c.image_size, channels=c.channels, mean=c.mean, std=c.std)

    def build(self, dims: ModelDims) -> nn.Module:
        from apt_plugin_vision.vit import ViT

        c = self.config
        width = self.width(dims)
        return ViT(image_size=c.image_size, patch_size=c.patch_size, channels=c.channels, width=width,
                   layers=c.layers, heads=c.heads, mlp_width=self.mlp_width(width), class_token=c.class_token,
                   activation=c.activation, **LAYOUTS[c.layout])

    def load_pretrained(self, module: nn.Module) -> None:
        if self.config.pretrained is None:
            return
        from apt_plugin_vision.pretrained import load_into
        from apt_plugin_vision.vit import ViT

        if not isinstance(module, ViT):
            raise TypeError(f"encoder.vit loads pretrained weights into its own ViT, not {type(module).__name__}")
        load_into(module, Path(self.config.pretrained).expanduser(), self.config)

    def self_test(self) -> str:
        """Decodes a PNG made in memory and runs a narrow, one-block ViT of this config's geometry on it,
        so a broken Pillow or torch install shows up at install time, not at the first training step."""
        import torch
        from PIL import Image

        from apt_plugin_vision.image import decode

        c = self.config
        buffer = io.BytesIO()
        Image.linear_gradient("L").convert("RGB").save(buffer, format="PNG")
        buffer.seek(0)
        image = decode(buffer, size=c.image_size, channels=c.channels, mean=c.mean, std=c.std)
        small = ViTProvider(dataclasses.replace(c, width=8 * c.heads, layers=1, mlp_width=None, pretrained=None))
        dims = ModelDims(n_layer=1, n_head=c.heads, d_model=8 * c.heads, block_size=8, vocab_size=8)
        small.check(dims)
        module = small.build(dims).eval()
        with torch.no_grad():
            out = module(torch.stack([image, torch.rand_like(image)]))
        if tuple(out.shape) != (2, self.tokens(), 8 * c.heads) or not torch.isfinite(out).all():
            raise RuntimeError(f"ViT returned {tuple(out.shape)} (finite: {bool(torch.isfinite(out).all())}), "
                               f"expected (2, {self.tokens()}, {8 * c.heads}) finite")
        return (f"vit: a {c.image_size}x{c.image_size} PNG decodes to {tuple(image.shape)} and encodes to "
                f"{self.tokens()} finite feature vectors")
