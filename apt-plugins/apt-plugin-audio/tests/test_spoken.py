"""The spoken-digits dataset, synthesised for real on a small grid (2 voices x 10 digits)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from apt import AptError
from apt_plugin_audio import spoken
from apt_plugin_audio.provider import LogMelConvConfig, LogMelConvProvider

SMALL = {"train_voices": ("en-us",), "val_voices": ("en-gb-scotland",), "variants": ("", "+f2"),
         "speeds": (150, 180), "pitches": (40, 60), "train_per_digit": 1, "val_per_digit": 1}


def records(folder: Path, split: str) -> list[dict[str, str]]:
    return [json.loads(line) for line in (folder / f"{split}.jsonl").read_text().splitlines()]


def test_small_grid_synthesises_decodable_clips(espeak_ng: str, tmp_path) -> None:
    utterances = spoken.plan(3, **SMALL)
    counts = spoken.synthesise(tmp_path, utterances, workers=2)
    assert counts == {"train": 10, "val": 10}
    train, val = records(tmp_path, "train"), records(tmp_path, "val")
    assert sorted(r["text"] for r in train) == sorted(spoken.DIGITS) == sorted(r["text"] for r in val)
    assert all(set(r) == {"text", "audio"} for r in train + val)
    provider = LogMelConvProvider(LogMelConvConfig())
    for r in train + val:
        features = provider.load(tmp_path / r["audio"])  # (40, 150)
        assert features.shape == (40, 150) and torch.isfinite(features).all()
        assert features.max() > features.min() + 1.0  # speech, not silence
    voices = {u.audio: u.voice.partition("+")[0] for u in utterances}
    assert {voices[r["audio"]] for r in train} == {"en-us"} and {voices[r["audio"]] for r in val} == {"en-gb-scotland"}


def test_plan_holds_out_whole_voices_and_is_seeded() -> None:
    full = spoken.plan(0)
    train = [u for u in full if u.split == "train"]
    val = [u for u in full if u.split == "val"]
    assert (len(train), len(val)) == (2160, 300)
    assert not {u.voice.partition("+")[0] for u in train} & {u.voice.partition("+")[0] for u in val}
    assert len({u.audio for u in full}) == len(full)
    per_setting = {(u.voice, u.text, u.speed, u.pitch) for u in train}
    assert len(per_setting) == len(train)  # no clip repeats another of its voice and digit
    assert spoken.plan(0) == full and spoken.plan(1) != full
    with pytest.raises(ValueError, match="both splits"):
        spoken.plan(0, train_voices=("en-us",), val_voices=("en-us",))


def test_without_espeak_the_error_says_how_to_install_it(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(AptError) as info:
        spoken.prepare(tmp_path / "out", seed=0)
    message = str(info.value)
    assert "\n" not in message and "espeak-ng, which is not installed" in message
    assert "apt-get install espeak-ng" in message and "brew install espeak-ng" in message


def test_an_unknown_voice_is_one_line(espeak_ng: str, tmp_path) -> None:
    bad = spoken.plan(0, **{**SMALL, "train_voices": ("xx-nowhere",)})
    with pytest.raises(AptError, match="espeak-ng failed to say .* in voice xx-nowhere") as info:
        spoken.synthesise(tmp_path, bad, workers=2)
    assert "\n" not in str(info.value)
