"""Reading WAV files: every PCM width, stereo, resampling, clip length, and one line for each bad file."""

from __future__ import annotations

import wave

import numpy as np
import pytest
import torch

from apt import AptError
from apt_plugin_audio import features
from apt_plugin_audio.features import load_clip, read_wav, resample
from apt_plugin_audio.provider import LogMelConvConfig, LogMelConvProvider


def peak_hz(audio: torch.Tensor, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(audio.numpy() * np.hanning(audio.shape[0])))
    return float(np.argmax(spectrum) * rate / audio.shape[0])


@pytest.mark.parametrize("sampwidth", [1, 2, 3, 4])
def test_every_pcm_width_decodes(tmp_path, write_pcm, sine, sampwidth: int) -> None:
    tone = sine(440.0, 16000, 0.5)
    path = write_pcm(tmp_path / f"{sampwidth}.wav", tone, 16000, sampwidth)
    audio, rate = read_wav(path, 10.0)
    assert rate == 16000 and audio.dtype == torch.float32 and audio.shape == (8000,)
    quantum = 2.0 ** -(8 * sampwidth - 1)
    np.testing.assert_allclose(audio.numpy(), tone, atol=quantum)


def test_stereo_is_averaged(tmp_path, write_pcm, sine) -> None:
    left, right = sine(440.0, 16000, 0.25, 0.6), sine(440.0, 16000, 0.25, 0.2)
    path = write_pcm(tmp_path / "stereo.wav", np.stack([left, right], axis=1), 16000)
    audio, _ = read_wav(path, 10.0)
    np.testing.assert_allclose(audio.numpy(), (left + right) / 2, atol=2 / 32768)


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_resampling_keeps_a_tone_at_its_frequency(tmp_path, write_pcm, sine, rate: int) -> None:
    path = write_pcm(tmp_path / f"{rate}.wav", sine(1000.0, rate, 1.0), rate)
    audio = load_clip(path, 16000, 1.0)
    assert audio.shape == (16000,)
    assert abs(peak_hz(audio, 16000) - 1000.0) <= 1.0
    # Band-limited: the tone keeps its amplitude (away from the edges), with no aliasing images.
    assert float(audio[2000:14000].abs().max()) == pytest.approx(0.5, abs=0.01)


@pytest.mark.parametrize(("orig", "new"), [(22050, 16000), (44100, 16000), (8000, 16000), (48000, 16000)])
def test_resampled_samples_sit_at_the_new_times(sine, orig: int, new: int) -> None:
    """Sample i of the output is the signal at time i / new: no shift, no gain change."""
    out = resample(torch.from_numpy(sine(1234.5, orig, 0.5)).float(), orig, new)
    assert out.shape == (new // 2,)
    expected = sine(1234.5, new, 0.5)
    np.testing.assert_allclose(out.numpy()[100:-100], expected[100:-100], atol=3e-3)


@pytest.mark.parametrize(("orig", "new"), [(22050, 16000), (8000, 16000), (44100, 16000)])
def test_the_per_sample_filter_equals_the_polyphase_table(monkeypatch, sine, orig: int, new: int) -> None:
    x = torch.from_numpy(sine(700.0, orig, 0.2)).float()
    table = resample(x, orig, new)
    monkeypatch.setattr(features, "MAX_TABLE", 0)  # forces the per-sample path, as for odd rates
    torch.testing.assert_close(resample(x, orig, new), table, atol=1e-6, rtol=0)


def test_an_odd_rate_resamples_without_a_huge_table(sine) -> None:
    out = resample(torch.from_numpy(sine(1000.0, 44101, 1.0)).float(), 44101, 16000)  # 44101:16000 is irreducible
    assert out.shape == (16000,)
    np.testing.assert_allclose(out.numpy()[100:-100], sine(1000.0, 16000, 1.0)[100:-100], atol=3e-3)


def test_an_absurd_sample_rate_is_refused(tmp_path, raw_wav) -> None:
    assert_refused(raw_wav(tmp_path / "fast.wav", rate=1_000_000_000, data=b"\0" * 100),
                   "sample rate of 1000000000 Hz")


def test_downsampling_removes_what_the_new_rate_cannot_hold(sine) -> None:
    high = torch.from_numpy(sine(12000.0, 44100, 1.0)).float()  # above the new Nyquist of 8 kHz
    out = resample(high, 44100, 16000)
    assert out.shape == (16000,)
    assert float(out[1000:15000].abs().max()) < 0.01  # linear interpolation would alias it to 4 kHz


def test_resampling_is_deterministic(sine) -> None:
    x = torch.from_numpy(sine(300.0, 22050, 0.3)).float()
    assert torch.equal(resample(x, 22050, 16000), resample(x, 22050, 16000))


def test_clips_are_padded_and_trimmed(tmp_path, write_pcm, sine) -> None:
    short = write_pcm(tmp_path / "short.wav", sine(440.0, 16000, 0.5), 16000)
    long = write_pcm(tmp_path / "long.wav", sine(440.0, 16000, 3.0), 16000)
    padded, trimmed = load_clip(short, 16000, 1.5), load_clip(long, 16000, 1.5)
    assert padded.shape == trimmed.shape == (24000,)
    assert torch.all(padded[8000:] == 0) and padded[:8000].abs().max() > 0.4
    assert trimmed[-100:].abs().max() > 0.4


def test_provider_load_gives_the_module_input(tmp_path, write_pcm, sine) -> None:
    provider = LogMelConvProvider(LogMelConvConfig())
    features = provider.load(write_pcm(tmp_path / "a.wav", sine(440.0, 44100, 2.0), 44100))
    assert features.shape == (40, 150) and features.dtype == torch.float32 and torch.isfinite(features).all()


# -- bad files: each gives one AptError line saying what is wrong ----------------------------------


def assert_refused(path, *fragments: str) -> None:
    provider = LogMelConvProvider(LogMelConvConfig())
    with pytest.raises(AptError) as info:
        provider.load(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith("cannot read audio: "), message
    for fragment in fragments:
        assert fragment in message, message


def test_missing_file(tmp_path) -> None:
    assert_refused(tmp_path / "nope.wav", "does not exist")


def test_text_named_wav(tmp_path) -> None:
    path = tmp_path / "notes.wav"
    path.write_text("this is not audio\n" * 10)
    assert_refused(path, "is not a WAV file")


def test_truncated_header(tmp_path, write_pcm, sine) -> None:
    good = write_pcm(tmp_path / "good.wav", sine(440.0, 16000, 0.1), 16000).read_bytes()
    path = tmp_path / "cut.wav"
    path.write_bytes(good[:30])  # inside the fmt chunk
    assert_refused(path, "truncated")


def test_float_wav(tmp_path, raw_wav) -> None:
    data = np.zeros(1600, dtype="<f4").tobytes()
    assert_refused(raw_wav(tmp_path / "float.wav", tag=3, bits=32, data=data), "format 3 (IEEE float)",
                   "pcm_s16le")


def test_gigantic_declared_length_is_not_read_and_is_refused(tmp_path, raw_wav) -> None:
    data = np.zeros(1000, dtype="<i2").tobytes()
    path = raw_wav(tmp_path / "liar.wav", data=data, declared=0xFFFFFFF0)
    with wave.open(str(path), "rb") as w:
        assert w.getnframes() > 2_000_000_000  # what a reader that trusts the header would allocate
    assert_refused(path, "truncated", "declares 2147483640 frames", "ends after 1000")


def test_zero_channels(tmp_path, raw_wav) -> None:
    assert_refused(raw_wav(tmp_path / "mono0.wav", channels=0, data=b"\0" * 100), "declares no channels")


def test_zero_frames(tmp_path, raw_wav) -> None:
    assert_refused(raw_wav(tmp_path / "empty.wav", data=b""), "holds no audio frames")


def test_a_folder_named_wav(tmp_path) -> None:
    (tmp_path / "dir.wav").mkdir()
    assert_refused(tmp_path / "dir.wav", "is not a file")
