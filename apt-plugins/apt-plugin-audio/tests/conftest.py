"""Fixtures of this package's tests: WAV writers (honest and lying), a sine, and the espeak-ng gate."""

from __future__ import annotations

import os
import shutil
import struct
import wave
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture
def espeak_ng() -> str:
    """espeak-ng's path; skip without it, except in CI, which installs it (so a skip there is a failure)."""
    path = shutil.which("espeak-ng")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("espeak-ng is not installed, but CI is set and CI installs it (apt-get install espeak-ng)")
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    return path


def _write_pcm(path: Path, samples: np.ndarray, rate: int, sampwidth: int = 2) -> Path:
    """Float samples in [-1, 1], shape (n,) or (n, channels), as little-endian integer PCM."""
    frames = samples if samples.ndim == 2 else samples[:, None]
    scale = float(1 << (8 * sampwidth - 1))
    ints = np.clip(np.round(frames * scale), -scale, scale - 1).astype(np.int64)
    if sampwidth == 1:
        raw = (ints + 128).astype(np.uint8).tobytes()
    elif sampwidth == 3:
        u = (ints & 0xFFFFFF).astype(np.uint32)
        raw = np.stack([u & 0xFF, (u >> 8) & 0xFF, (u >> 16) & 0xFF], axis=-1).astype(np.uint8).tobytes()
    else:
        raw = ints.astype({2: "<i2", 4: "<i4"}[sampwidth]).tobytes()
    with wave.open(str(path), "wb") as w:
        w.setnchannels(frames.shape[1])
        w.setsampwidth(sampwidth)
        w.setframerate(rate)
        w.writeframes(raw)
    return path


def _raw_wav(path: Path, *, tag: int = 1, channels: int = 1, rate: int = 16000, bits: int = 16,
            data: bytes = b"", declared: int | None = None) -> Path:
    """A WAV written byte by byte, so a test can make the header lie (format tag, sizes)."""
    block = channels * bits // 8
    fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * block, block, bits)
    size = len(data) if declared is None else declared
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", size) + data
    path.write_bytes(b"RIFF" + struct.pack("<I", min(4 + len(body) - len(data) + size, 0xFFFFFFFF)) + body)
    return path


@pytest.fixture
def sine() -> Callable[..., np.ndarray]:
    def make(freq: float, rate: int, seconds: float, amplitude: float = 0.5) -> np.ndarray:
        t = np.arange(round(seconds * rate)) / rate
        return amplitude * np.sin(2 * np.pi * freq * t)

    return make


@pytest.fixture
def write_pcm() -> Callable[..., Path]:
    return _write_pcm


@pytest.fixture
def raw_wav() -> Callable[..., Path]:
    return _raw_wav
