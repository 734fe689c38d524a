"""Log-mel features against a reference written here in numpy from Whisper's and librosa's definitions."""

from __future__ import annotations

import math
import subprocess

import numpy as np
import pytest
import torch

from apt_plugin_audio.features import load_clip, log_mel, mel_filters


def hz_to_mel(f: float) -> float:
    """Slaney's Auditory Toolbox scale: 3 mels per 200 Hz up to 1 kHz, then 27 steps per factor 6.4."""
    if f < 1000.0:
        return 3.0 * f / 200.0
    return 15.0 + 27.0 * math.log(f / 1000.0) / math.log(6.4)


def mel_to_hz(m: float) -> float:
    if m < 15.0:
        return 200.0 * m / 3.0
    return 1000.0 * 6.4 ** ((m - 15.0) / 27.0)


def reference_filters(sr: int, n_fft: int, n_mels: int) -> np.ndarray:
    """Triangles between consecutive mel-spaced edges, each scaled to unit area (2 / bandwidth)."""
    top = hz_to_mel(sr / 2)
    edges = [mel_to_hz(top * i / (n_mels + 1)) for i in range(n_mels + 2)]
    freqs = [k * sr / n_fft for k in range(n_fft // 2 + 1)]
    out = np.zeros((n_mels, len(freqs)))
    for m in range(n_mels):
        left, centre, right = edges[m], edges[m + 1], edges[m + 2]
        for k, f in enumerate(freqs):
            if left < f <= centre:
                out[m, k] = (f - left) / (centre - left)
            elif centre < f < right:
                out[m, k] = (right - f) / (right - centre)
        out[m] *= 2.0 / (right - left)
    return out


def reference_log_mel(audio: np.ndarray, sr: int, n_fft: int, hop: int, n_mels: int) -> np.ndarray:
    """Whisper's recipe with numpy's FFT: reflect-pad by n_fft/2 (torch.stft center=True), periodic
    Hann, |rfft|^2, drop the last frame, mel, log10 floored at 1e-10 and at the peak - 8, (x + 4) / 4."""
    x = np.pad(audio.astype(np.float64), n_fft // 2, mode="reflect")
    n_frames = 1 + (len(x) - n_fft) // hop
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    frames = np.stack([x[i * hop: i * hop + n_fft] * window for i in range(n_frames)])
    power = (np.abs(np.fft.rfft(frames, axis=1)) ** 2)[:-1].T
    mel = reference_filters(sr, n_fft, n_mels) @ power
    log = np.log10(np.maximum(mel, 1e-10))
    log = np.maximum(log, log.max() - 8.0)
    return (log + 4.0) / 4.0


def chirp(sr: int, seconds: float) -> np.ndarray:
    """A tone sweeping 100 Hz -> 7 kHz with a little noise: energy in every mel band."""
    t = np.arange(round(sr * seconds)) / sr
    sweep = np.sin(2 * np.pi * (100 * t + (7000 - 100) / (2 * seconds) * t**2))
    return 0.4 * sweep + 0.01 * np.random.default_rng(0).standard_normal(t.shape)


@pytest.mark.parametrize(("sr", "n_fft", "n_mels"), [(16000, 400, 80), (16000, 400, 40), (16000, 400, 128),
                                                      (22050, 512, 64)])
def test_filterbank_matches_the_slaney_reference(sr: int, n_fft: int, n_mels: int) -> None:
    ours = mel_filters(sr, n_fft, n_mels).numpy()
    assert ours.shape == (n_mels, n_fft // 2 + 1) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, reference_filters(sr, n_fft, n_mels), rtol=1e-5, atol=1e-8)


def test_filterbank_is_computed_once_per_setting() -> None:
    assert mel_filters(16000, 400, 80) is mel_filters(16000, 400, 80)


def test_log_mel_of_a_chirp_matches_numpy() -> None:
    audio = chirp(16000, 1.5)
    ours = log_mel(torch.from_numpy(audio).float(), 16000, 400, 160, 80)
    assert ours.shape == (80, 150)
    np.testing.assert_allclose(ours.numpy(), reference_log_mel(audio, 16000, 400, 160, 80), atol=1e-4)
    exact = log_mel(torch.from_numpy(audio), 16000, 400, 160, 80)  # float64 all the way
    np.testing.assert_allclose(exact.numpy(), reference_log_mel(audio, 16000, 400, 160, 80), atol=1e-6)


def test_log_mel_of_speech_matches_numpy(espeak_ng: str, tmp_path) -> None:
    wav = tmp_path / "seven.wav"
    subprocess.run([espeak_ng, "-v", "en-us", "-w", str(wav), "seven"], check=True, timeout=30)
    audio = load_clip(wav, 16000, 1.5)  # espeak-ng writes 22.05 kHz: this resamples
    ours = log_mel(audio, 16000, 400, 160, 40)
    assert ours.shape == (40, 150)
    reference = reference_log_mel(audio.numpy(), 16000, 400, 160, 40)
    np.testing.assert_allclose(ours.numpy(), reference, atol=1e-4)
    assert ours.max() == pytest.approx((reference.max() + 0.0), abs=1e-4)
    assert ours.min() >= ours.max() - 2.0 - 1e-6  # the 80 dB floor, after (x + 4) / 4


def test_silence_is_finite() -> None:
    out = log_mel(torch.zeros(24000), 16000, 400, 160, 40)
    assert torch.isfinite(out).all() and torch.all(out == (-10.0 + 4.0) / 4.0)
