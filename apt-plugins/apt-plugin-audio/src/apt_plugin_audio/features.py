"""Clips of audio to Whisper's log-mel features, in torch alone.

The features are computed exactly as Whisper computes them (``whisper.audio.log_mel_spectrogram``)
so that a published Whisper encoder sees what it was trained on; torchaudio and librosa are not
needed because the STFT is ``torch.stft`` and the filterbank is a few lines of arithmetic.

WAV files are read with the standard library's :mod:`wave`: PCM is what speech corpora and
espeak-ng write, and anything else (compressed, float, broken) becomes one
:class:`apt.AptError` line that the data loader prefixes with the JSONL line.
"""

from __future__ import annotations

import functools
import math
import struct
import wave
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from apt import AptError

#: Whisper's dynamic range: log10 powers more than 8 (80 dB) below the clip's peak are floored.
DYNAMIC_RANGE = 8.0
#: Half-width of the resampler's windowed sinc, in zero crossings of the lower rate (torchaudio's default).
SINC_ZEROS = 6
#: Cut-off of the resampling low-pass as a fraction of the lower Nyquist frequency, to leave a transition band.
ROLLOFF = 0.99


def _hz_to_mel(hz: torch.Tensor) -> torch.Tensor:
    """Slaney's mel scale (librosa's default, ``htk=False``): linear below 1 kHz, logarithmic above."""
    f_sp = 200.0 / 3
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = math.log(6.4) / 27.0
    linear = hz / f_sp
    logarithmic = min_log_mel + torch.log(hz.clamp(min=min_log_hz) / min_log_hz) / logstep
    return torch.where(hz >= min_log_hz, logarithmic, linear)


def _mel_to_hz(mel: torch.Tensor) -> torch.Tensor:
    f_sp = 200.0 / 3
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = math.log(6.4) / 27.0
    linear = mel * f_sp
    logarithmic = min_log_hz * torch.exp(logstep * (mel - min_log_mel))
    return torch.where(mel >= min_log_mel, logarithmic, linear)


@functools.lru_cache(maxsize=16)
def mel_filters(sample_rate: int, n_fft: int, n_mels: int) -> torch.Tensor:
    """The (n_mels, n_fft // 2 + 1) filterbank of ``librosa.filters.mel(sr, n_fft, n_mels)``,
    which is the one Whisper ships in ``mel_filters.npz``.

    Cached because every clip of a corpus uses the same one; computed in float64 and rounded
    once so it matches librosa's to float32 precision. Callers must not modify it in place.
    """
    fft_freqs = torch.linspace(0.0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)  # (F,)
    mels = torch.linspace(0.0, float(_hz_to_mel(torch.tensor(sample_rate / 2, dtype=torch.float64))), n_mels + 2,
                          dtype=torch.float64)
    mel_f = _mel_to_hz(mels)  # (n_mels + 2,) band edges in Hz
    fdiff = mel_f[1:] - mel_f[:-1]  # (n_mels + 1,)
    ramps = mel_f[:, None] - fft_freqs[None, :]  # (n_mels + 2, F)
    lower = -ramps[:-2] / fdiff[:-1, None]  # (n_mels, F) rising edge of each triangle
    upper = ramps[2:] / fdiff[1:, None]  # (n_mels, F) falling edge
    weights = torch.clamp(torch.minimum(lower, upper), min=0.0)
    # Slaney normalisation: every triangle has unit area, so wide high bands do not dominate.
    enorm = 2.0 / (mel_f[2:] - mel_f[:-2])  # (n_mels,)
    return (weights * enorm[:, None]).to(torch.float32)


def log_mel(audio: torch.Tensor, sample_rate: int, n_fft: int, hop_length: int, n_mels: int) -> torch.Tensor:
    """(n_samples,) float audio -> (n_mels, n_samples // hop_length) features scaled like Whisper's.

    Computed in the audio's dtype (float32 in training; float64 lets tests compare exactly).
    """
    window = torch.hann_window(n_fft, dtype=audio.dtype)
    stft = torch.stft(audio, n_fft, hop_length, window=window, return_complex=True)  # (F, frames + 1)
    # Whisper drops the last frame: with center=True it only sees the reflected tail of the clip.
    power = stft[..., :-1].abs() ** 2  # (F, frames)
    mel = mel_filters(sample_rate, n_fft, n_mels).to(power.dtype) @ power  # (n_mels, frames)
    log_spec = torch.clamp(mel, min=1e-10).log10()
    log_spec = torch.maximum(log_spec, log_spec.max() - DYNAMIC_RANGE)
    return (log_spec + 4.0) / 4.0


#: Polyphase tables larger than this (elements) are not built: a rate pair with a large reduced
#: ratio (44101 Hz -> 16 kHz is 44101:16000) computes its taps per output sample instead.
MAX_TABLE = 1 << 21
#: Highest sample rate accepted (DXD is 705.6 kHz): the filter grows with the ratio of the rates.
MAX_RATE = 768_000


def _taps(t: torch.Tensor, base: float) -> torch.Tensor:
    """Windowed-sinc weights at ``t`` input samples from the output instant; ``base`` is the cut-off
    as a fraction of the input rate, times 2 (a cut-off at the lower Nyquist frequency is min/orig)."""
    t = (t * base).clamp(-SINC_ZEROS, SINC_ZEROS)  # in zero crossings of the low-pass
    window = torch.cos(t * math.pi / SINC_ZEROS / 2) ** 2  # Hann, zero at +-SINC_ZEROS
    t = t * math.pi
    safe = torch.where(t == 0, torch.ones_like(t), t)
    return torch.where(t == 0, torch.ones_like(t), torch.sin(safe) / safe) * window * base


@functools.lru_cache(maxsize=16)
def _polyphase(orig: int, new: int) -> tuple[torch.Tensor, int]:
    """The (2 * width + orig, new) table of a reduced rate pair, and ``width``.

    ``orig`` and ``new`` are the two rates divided by their gcd: output ``j`` of each block of
    ``new`` is a dot product of the input around position ``j * orig / new``, so one matrix
    product over strided windows resamples the whole clip. Float64, cached per rate pair.
    """
    base = min(orig, new) * ROLLOFF / orig
    width = math.ceil(SINC_ZEROS / base)
    offsets = torch.arange(-width, width + orig, dtype=torch.float64)[None, :]  # (1, K) input samples
    t = offsets - torch.arange(new, dtype=torch.float64)[:, None] * (orig / new)  # (new, K)
    return _taps(t, base).T.contiguous(), width


def _direct(x: torch.Tensor, orig: int, new: int, n_out: int) -> torch.Tensor:
    """The same filter evaluated per output sample, in chunks: memory bounded for any rate pair."""
    base = min(orig, new) * ROLLOFF / orig
    width = math.ceil(SINC_ZEROS / base)
    x = F.pad(x, (width + 1, width + 1))  # (n + 2 * width + 2,)
    taps = torch.arange(-width, width + 2)  # (K,)
    rows = max(1, MAX_TABLE // taps.numel())
    out = []
    for start in range(0, n_out, rows):
        j = torch.arange(start, min(start + rows, n_out))  # (R,)
        floor = (j * orig) // new  # integer part of each output's input position, exactly
        frac = ((j * orig) % new).to(torch.float64) / new  # (R,)
        idx = floor[:, None] + taps[None, :]  # (R, K) input samples around each output
        t = idx.to(torch.float64) - floor[:, None].to(torch.float64) - frac[:, None]  # (R, K) offsets
        out.append((x[idx + width + 1] * _taps(t, base)).sum(dim=1))  # (R,)
    return torch.cat(out)


def resample(audio: torch.Tensor, orig_rate: int, new_rate: int) -> torch.Tensor:
    """(n,) -> (ceil(n * new_rate / orig_rate),) by band-limited (windowed-sinc) interpolation.

    Band-limited rather than linear so that downsampling 44.1 kHz speech does not fold energy
    above 8 kHz back into the mel bands; deterministic because the weights are a fixed function
    of the two rates (the same filter as torchaudio's default ``sinc_interp_hann``).
    """
    if orig_rate == new_rate:
        return audio
    g = math.gcd(orig_rate, new_rate)
    orig, new = orig_rate // g, new_rate // g
    n = audio.shape[-1]
    n_out = math.ceil(new * n / orig)
    x = audio.to(torch.float64)
    width = math.ceil(SINC_ZEROS / (min(orig, new) * ROLLOFF / orig))
    if (2 * width + orig) * new > MAX_TABLE:
        return _direct(x, orig, new, n_out).to(torch.float32)
    table, width = _polyphase(orig, new)  # (K, new)
    windows = F.pad(x, (width, width + orig)).unfold(0, table.shape[0], orig)  # (blocks, K): block b at b * orig
    y = (windows @ table).reshape(-1)  # (blocks * new,): outputs b * new .. b * new + new - 1
    return y[:n_out].to(torch.float32)


def _decode_pcm(raw: bytes, sampwidth: int, channels: int) -> np.ndarray:
    """Little-endian PCM bytes -> (frames,) float32 in [-1, 1), channels averaged."""
    frames = len(raw) // (sampwidth * channels)
    raw = raw[: frames * sampwidth * channels]
    if sampwidth == 1:  # 8-bit WAV is unsigned, centred on 128
        ints = np.frombuffer(raw, dtype=np.uint8).astype(np.int32) - 128
    elif sampwidth == 2:
        ints = np.frombuffer(raw, dtype="<i2").astype(np.int32)
    elif sampwidth == 3:
        b = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        ints = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        ints = np.where(ints >= 1 << 23, ints - (1 << 24), ints)  # sign-extend 24 bits
    else:
        ints = np.frombuffer(raw, dtype="<i4").astype(np.int64)
    scaled = ints.astype(np.float64) / float(1 << (8 * sampwidth - 1))
    return scaled.reshape(frames, channels).mean(axis=1).astype(np.float32)


#: WAV format tags that :mod:`wave` refuses, named for the error line.
FORMATS = {2: "Microsoft ADPCM", 3: "IEEE float", 6: "A-law", 7: "mu-law", 17: "IMA ADPCM", 85: "MP3",
           0xFFFE: "WAVE_FORMAT_EXTENSIBLE"}
CONVERT = "convert it to PCM, e.g. ffmpeg -i IN -c:a pcm_s16le OUT.wav"


def _wave_problem(message: str) -> str:
    """:mod:`wave`'s terse errors as a reason a user can act on."""
    if message.startswith("unknown format:"):
        tag = message.partition(":")[2].strip()
        name = FORMATS.get(int(tag), "not PCM") if tag.isdigit() else "not PCM"
        return f"is WAV format {tag} ({name}), not integer PCM: {CONVERT}"
    if "RIFF" in message or "WAVE" in message:
        return f"is not a WAV file ({message})"
    if "channels" in message:
        return "declares no channels"
    return f"is not a readable PCM WAV file ({message})"


def read_wav(path: Path, max_seconds: float) -> tuple[torch.Tensor, int]:
    """The first ``max_seconds`` of a PCM WAV file as (n,) float32 mono, and its sample rate.

    Reads no more than that (a header may declare gigabytes), and refuses a file whose data ends
    before what its header declares: a truncated file is a broken corpus, not a short clip.
    """
    if not path.is_file():
        raise AptError(f"cannot read audio: {path} {'is not a file' if path.exists() else 'does not exist'}")
    try:
        with wave.open(str(path), "rb") as w:
            channels, sampwidth, rate, nframes = w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()
            if channels < 1:
                raise AptError(f"cannot read audio: {path} declares no channels")
            if sampwidth not in (1, 2, 3, 4):
                raise AptError(f"cannot read audio: {path} has {8 * sampwidth}-bit samples; "
                               f"expected 8, 16, 24 or 32-bit PCM")
            if not 1 <= rate <= MAX_RATE:
                raise AptError(f"cannot read audio: {path} declares a sample rate of {rate} Hz; "
                               f"expected 1 to {MAX_RATE}")
            if nframes < 1:
                raise AptError(f"cannot read audio: {path} holds no audio frames")
            wanted = min(nframes, math.ceil(max_seconds * rate))
            raw = w.readframes(wanted)
    except AptError:
        raise
    except wave.Error as err:
        raise AptError(f"cannot read audio: {path} {_wave_problem(str(err))}") from None
    except EOFError:
        raise AptError(f"cannot read audio: {path} ends inside its header (truncated)") from None
    except OSError as err:
        raise AptError(f"cannot read audio: {path}: {err.strerror or err}") from None
    except (RuntimeError, ValueError, struct.error) as err:  # the chunk reader under wave, on a corrupt header
        raise AptError(f"cannot read audio: {path} is not a readable PCM WAV file ({err or type(err).__name__})") \
            from None
    got = len(raw) // (sampwidth * channels)
    if got < wanted:
        raise AptError(f"cannot read audio: {path} is truncated: its header declares {nframes} frames "
                       f"but the data ends after {got}")
    return torch.from_numpy(_decode_pcm(raw, sampwidth, channels)), rate


def fit_length(audio: torch.Tensor, n_samples: int) -> torch.Tensor:
    """Trim or zero-pad (n,) to (n_samples,): every item of a batch has one shape, as Whisper pads to 30 s."""
    if audio.shape[0] >= n_samples:
        return audio[:n_samples]
    return F.pad(audio, (0, n_samples - audio.shape[0]))


def load_clip(path: Path, sample_rate: int, seconds: float) -> torch.Tensor:
    """A WAV file as (round(seconds * sample_rate),) float32 mono at ``sample_rate``."""
    n_samples = round(seconds * sample_rate)
    # Read a little past the clip so the resampler's filter sees real audio at its end, not padding.
    audio, rate = read_wav(path, seconds + 2 * SINC_ZEROS / min(sample_rate, 8000))
    return fit_length(resample(audio, rate, sample_rate), n_samples)
