"""The encoder.logmel_conv provider (imports torch only when it loads audio or builds the module)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from apt import EncoderProvider, ModelDims, option, require

if TYPE_CHECKING:
    import torch
    from torch import nn

    from apt_plugin_audio.encoder import LogMelConvEncoder


def conv_positions(frames: int) -> int:
    """Positions after the stride-2 convolution (kernel 3, padding 1): ceil(frames / 2)."""
    return (frames - 1) // 2 + 1 if frames > 0 else 0


@dataclass(frozen=True)
class LogMelConvConfig:
    sample_rate: int = option(16000, ge=1000, le=192000,
                              doc="Hz every clip is resampled to before the STFT (Whisper: 16000)")
    n_fft: int = option(400, ge=16, le=8192, doc="STFT window in samples (Whisper: 400, 25 ms)")
    hop_length: int = option(160, ge=1, le=8192, doc="samples between STFT frames (Whisper: 160, 10 ms)")
    n_mels: int = option(40, ge=1, le=512, doc="mel bands per frame (Whisper: 80, large-v3: 128)")
    seconds: float = option(1.5, gt=0.0, le=600.0,
                            doc="clip length: longer audio is cut, shorter padded with silence (Whisper: 30)")
    width: int | None = option(None, ge=4, le=16384, doc="encoder width; null: the language model's d_model")
    layers: int = option(2, ge=0, le=128, doc="transformer blocks after the convolutions")
    heads: int = option(2, ge=1, le=256, doc="attention heads per block (must divide width)")
    mlp_mult: int = option(4, ge=1, le=16, doc="MLP hidden size as a multiple of width")
    pool: int = option(2, ge=1, le=1024,
                       doc="average this many positions into one token, to cut what the language model attends to")
    pretrained: str | None = option(None, doc="folder with config.json and model.safetensors of a Hugging Face "
                                              "Whisper model (or its encoder) to start from")

    def __post_init__(self) -> None:
        n_samples = round(self.seconds * self.sample_rate)
        require(n_samples > self.n_fft // 2, "seconds",
                f"{self.seconds} s is {n_samples} samples, shorter than half the STFT window ({self.n_fft})")
        positions = conv_positions(n_samples // self.hop_length)
        require(positions >= self.pool, "pool",
                f"{self.seconds} s gives {positions} positions after the convolutions, fewer than pool {self.pool}")


class LogMelConvProvider(EncoderProvider):
    """Audio as Whisper sees it: a log-mel spectrogram through two convolutions (the second
    halving time) and bidirectional transformer blocks, average-pooled into ``tokens()``
    feature vectors. ``pretrained`` starts it from a published Whisper encoder."""

    name = "logmel_conv"
    modality = "audio"
    Config = LogMelConvConfig

    @property
    def n_samples(self) -> int:
        return round(self.config.seconds * self.config.sample_rate)

    @property
    def frames(self) -> int:
        """STFT frames per clip: Whisper drops the last of the n_samples // hop + 1 frames."""
        return self.n_samples // self.config.hop_length

    def tokens(self) -> int:
        return conv_positions(self.frames) // self.config.pool

    def width(self, dims: ModelDims) -> int:
        return self.config.width if self.config.width is not None else dims.d_model

    def check(self, dims: ModelDims) -> None:
        width = self.width(dims)
        key = "width" if self.config.width is not None else "heads"
        require(width % self.config.heads == 0, key,
                f"width {width} is not divisible by heads {self.config.heads}")
        require(width % 2 == 0 and width >= 4, "width",
                f"width {width} must be even and at least 4 (the position table pairs sines with cosines)")

    def load(self, path: Path) -> torch.Tensor:
        from apt_plugin_audio.features import load_clip, log_mel

        c = self.config
        audio = load_clip(path, c.sample_rate, c.seconds)  # (n_samples,)
        return log_mel(audio, c.sample_rate, c.n_fft, c.hop_length, c.n_mels)  # (n_mels, frames)

    def build(self, dims: ModelDims) -> LogMelConvEncoder:
        from apt_plugin_audio.encoder import LogMelConvEncoder

        self.check(dims)
        width = self.width(dims)
        c = self.config
        return LogMelConvEncoder(c.n_mels, self.frames, width, c.layers, c.heads, c.mlp_mult * width, c.pool,
                                 dropout=dims.dropout)

    def load_pretrained(self, module: nn.Module) -> None:
        if self.config.pretrained is None:
            return
        from apt_plugin_audio.encoder import LogMelConvEncoder
        from apt_plugin_audio.pretrained import load_whisper

        assert isinstance(module, LogMelConvEncoder), f"encoder.logmel_conv cannot load weights into {module!r}"
        load_whisper(Path(self.config.pretrained).expanduser(), module, self.config)

    def self_test(self) -> str:
        import torch

        from apt_plugin_audio.features import fit_length, log_mel

        c = self.config
        dims = ModelDims(n_layer=1, n_head=2, d_model=32, block_size=16, vocab_size=11)
        t = torch.arange(self.n_samples, dtype=torch.float32) / c.sample_rate
        tone = fit_length(0.5 * torch.sin(2 * torch.pi * 440.0 * t), self.n_samples)  # (n_samples,)
        features = log_mel(tone, c.sample_rate, c.n_fft, c.hop_length, c.n_mels)  # (n_mels, frames)
        small = LogMelConvProvider(LogMelConvConfig(
            sample_rate=c.sample_rate, n_fft=c.n_fft, hop_length=c.hop_length, n_mels=c.n_mels, seconds=c.seconds,
            width=32, layers=1, heads=2, mlp_mult=2, pool=c.pool))
        torch.manual_seed(0)
        with torch.no_grad():
            out = small.build(dims).eval()(features[None])  # (1, n_tokens, 32)
        if out.shape != (1, small.tokens(), 32) or not torch.isfinite(out).all():
            raise RuntimeError(f"encoder.logmel_conv produced {tuple(out.shape)} (finite: "
                               f"{bool(torch.isfinite(out).all())}), expected (1, {small.tokens()}, 32)")
        return (f"{c.seconds:g} s tone -> log-mel {tuple(features.shape)} -> {small.tokens()} tokens of width 32, "
                f"all finite")
