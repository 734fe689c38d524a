"""The ``spoken-digits`` dataset: "zero" .. "nine" spoken by espeak-ng, for ``apt data prepare``.

Synthesised rather than downloaded, so it needs no network and no licence, and is the same on
every machine with the same espeak-ng. Whole voices (accents) are held out for validation, so
the validation loss measures whether a model recognises digits in an accent it never heard,
not whether it memorised the training voices.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from apt import AptError, atomic_write

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
#: espeak-ng's own English voices (the mbrola ones need extra packages).
TRAIN_VOICES = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-us-nyc", "en-gb-x-gbclan")
VAL_VOICES = ("en-029", "en-gb-x-gbcwmd")
#: Voice variants (espeak-ng's ``!v`` folder): male and female timbres over every accent.
VARIANTS = ("", "+m1", "+m3", "+m5", "+f2", "+f4")
SPEEDS = (130, 145, 160, 175, 190)
PITCHES = (30, 40, 50, 60, 70)
#: Clips per (voice, digit), drawn without replacement from variants x speeds x pitches (150 settings).
TRAIN_PER_DIGIT = 36
VAL_PER_DIGIT = 15
#: espeak-ng calls in flight: it is single-threaded and each call takes ~25 ms.
WORKERS = 3
TIMEOUT_S = 30.0
INSTALL = ("the spoken-digits dataset is synthesised with espeak-ng, which is not installed: "
           "apt-get install espeak-ng (Debian/Ubuntu) or brew install espeak-ng (macOS)")


@dataclass(frozen=True)
class Utterance:
    """One clip to synthesise; ``audio`` is its path relative to the dataset folder."""

    split: str
    text: str
    voice: str
    speed: int
    pitch: int
    audio: str


def plan(seed: int, *, train_voices: Sequence[str] = TRAIN_VOICES, val_voices: Sequence[str] = VAL_VOICES,
         variants: Sequence[str] = VARIANTS, speeds: Sequence[int] = SPEEDS, pitches: Sequence[int] = PITCHES,
         train_per_digit: int = TRAIN_PER_DIGIT, val_per_digit: int = VAL_PER_DIGIT) -> list[Utterance]:
    """Every clip of the dataset: for each voice and digit, settings drawn without replacement
    from variants x speeds x pitches, so no two clips of a voice say a digit identically."""
    if set(train_voices) & set(val_voices):
        raise ValueError(f"voices {sorted(set(train_voices) & set(val_voices))} are in both splits")
    rng = random.Random(seed)
    grid = [(v, s, p) for v in variants for s in speeds for p in pitches]
    out: list[Utterance] = []
    for split, voices, per_digit in (("train", train_voices, train_per_digit), ("val", val_voices, val_per_digit)):
        for voice in voices:
            for digit in DIGITS:
                for variant, speed, pitch in rng.sample(grid, min(per_digit, len(grid))):
                    out.append(Utterance(split, digit, voice + variant, speed, pitch, f"audio/{len(out):05d}.wav"))
    return out


def espeak() -> str:
    """The espeak-ng executable, or the one-line error that says how to install it."""
    path = shutil.which("espeak-ng")
    if path is None:
        raise AptError(INSTALL)
    return path


def _speak(exe: str, out: Path, u: Utterance) -> None:
    argv = [exe, "-v", u.voice, "-s", str(u.speed), "-p", str(u.pitch), "-w", str(out / u.audio), u.text]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise AptError(f"espeak-ng took over {TIMEOUT_S:g} s to say {u.text!r} in voice {u.voice}") from None
    except OSError as err:
        raise AptError(f"cannot run espeak-ng ({exe}): {err.strerror or err}") from None
    written = out / u.audio
    if proc.returncode != 0 or not written.is_file() or written.stat().st_size <= 44:
        reason = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}, no audio written"])[0]
        raise AptError(f"espeak-ng failed to say {u.text!r} in voice {u.voice}: {reason}")


def synthesise(out: Path, utterances: Sequence[Utterance], *, workers: int = WORKERS) -> dict[str, int]:
    """Write every utterance's WAV under ``out`` and the records to ``out/{train,val}.jsonl``."""
    exe = espeak()
    (out / "audio").mkdir(parents=True, exist_ok=True)
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        for future in [pool.submit(_speak, exe, out, u) for u in utterances]:
            future.result()  # the first failure stops the prepare ...
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # ... without running the thousands still queued
    counts: dict[str, int] = {}
    for split in ("train", "val"):
        rows = [u for u in utterances if u.split == split]
        lines = "".join(json.dumps({"text": u.text, "audio": u.audio}) + "\n" for u in rows)

        def write(f: BinaryIO, data: bytes = lines.encode("utf-8")) -> None:
            f.write(data)

        atomic_write(out / f"{split}.jsonl", write)
        counts[split] = len(rows)
    return counts


def prepare(out: Path, *, seed: int) -> dict[str, int]:
    """``apt data prepare spoken-digits``: 2,160 training clips in six accents, 300 validation
    clips in two held-out accents."""
    return synthesise(Path(out), plan(seed))
