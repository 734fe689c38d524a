"""Multimodal: what the shipped tasks reach and how fast, encoder throughput, text-only overhead.

1. ``digits_caption`` and ``spoken_digits`` end to end through the CLI (prepare, train, eval):
   held-out accuracy (greedy, exact match) and wall time, on 2 threads.
2. Encoder forward throughput on 2 threads at batch 64: images/s for the ViT as ``digits_caption``
   configures it and for a 32x32 RGB shape; seconds of audio per second for the log-mel encoder as
   ``spoken_digits`` configures it, with feature extraction (``load`` of a WAV) timed on its own.
3. Text-only cost of the multimodal code: ``LanguageModel.forward`` (which now checks for media)
   against the forward as it was before the change (its body, copied here), forward + backward of
   the ``shakespeare_char`` shape, interleaved in one process. Target >= 0.99x.
"""

from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys
import tempfile
import time
import wave
from collections.abc import Callable
from pathlib import Path

import torch
from common import arguments, interleave, paired_ratio, write

from apt.media import MediaSpec
from apt.model import LanguageModel, ModelBuilder
from apt.profile import load_profile

BIN = Path(sys.executable).parent


def cli(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(BIN / "apt"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=3600)
    if proc.returncode:
        raise SystemExit(f"apt {' '.join(args)} failed:\n{proc.stderr}")
    return proc


def task(profile: str, dataset: str, folder: str, root: Path) -> dict[str, object]:
    env = {**os.environ, "APT_HOME": str(root / "home")}
    started = time.perf_counter()
    cli(["data", "prepare", dataset, "--out", f"data/{folder}"], root, env)
    prepared = time.perf_counter()
    cli(["train", "-p", profile, "--set", "logging.progress=false", "--set", "train.threads=2"], root, env)
    trained = time.perf_counter()
    out = cli(["eval", "--checkpoint", f"runs/{profile}", "--data", f"data/{folder}/val.jsonl", "--json"], root, env)
    result = json.loads(out.stdout)
    return {"held_out_accuracy": round(result["accuracy"], 4), "held_out_records": result["records"],
            "val_loss": round(result["loss"], 4), "checkpoint_step": result["step"],
            "prepare_s": round(prepared - started, 1), "train_s": round(trained - prepared, 1),
            "eval_s": round(time.perf_counter() - trained, 1)}


def encoder(profile_name: str, overrides: list[str]) -> tuple[torch.nn.Module, object]:
    profile = load_profile(profile_name, overrides)
    spec = MediaSpec.from_profile(profile)
    assert spec is not None
    provider = next(iter(spec.encoders.values()))
    torch.manual_seed(0)
    dims = ModelBuilder(profile, 16).dims
    return provider.build(dims).eval(), provider


def throughput(module: torch.nn.Module, batch: torch.Tensor, rounds: int) -> float:
    with torch.no_grad():
        module(batch)
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            module(batch)
            times.append(time.perf_counter() - start)
    times.sort()
    return batch.shape[0] / times[len(times) // 2]


def tone(path: Path, seconds: float, rate: int = 22050) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"".join(struct.pack("<h", int(8000 * math.sin(2 * math.pi * 300 * i / rate)))
                               for i in range(int(seconds * rate))))


def encoders(rounds: int) -> dict[str, object]:
    out: dict[str, object] = {}
    vit, _ = encoder("digits_caption", [])
    out["vit_digits_8x8_images_per_s"] = round(throughput(vit, torch.randn(64, 1, 8, 8), rounds), 1)
    rgb, _ = encoder("digits_caption", ["providers.encoder.vit.image_size=32", "providers.encoder.vit.patch_size=4",
                                        "providers.encoder.vit.channels=3"])
    out["vit_rgb_32x32_images_per_s"] = round(throughput(rgb, torch.randn(64, 3, 32, 32), rounds), 1)
    audio, provider = encoder("spoken_digits", [])
    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / "clip.wav"
        tone(clip, 1.0)
        features = provider.load(clip)  # type: ignore[attr-defined]
        start = time.perf_counter()
        for _ in range(20):
            provider.load(clip)  # type: ignore[attr-defined]
        load_s = (time.perf_counter() - start) / 20
    seconds = provider.config.seconds  # type: ignore[attr-defined]
    clips_per_s = throughput(audio, features.unsqueeze(0).expand(64, -1, -1).contiguous(), rounds)
    out["logmel_encoder_audio_seconds_per_s"] = round(clips_per_s * seconds, 1)
    out["logmel_features_audio_seconds_per_s"] = round(seconds / load_s, 1)
    out["note"] = ("forward only, no grad, batch 64, 2 threads; features: reading, resampling 22.05 -> 16 kHz "
                   "and log-mel of one clip at a time")
    return out


def old_forward(model: LanguageModel, idx: torch.Tensor) -> torch.Tensor:
    """``LanguageModel.forward`` before the multimodal change, for the overhead comparison."""
    T = idx.shape[1]
    if T > model.dims.block_size:
        raise ValueError(f"sequence of {T} tokens exceeds block_size {model.dims.block_size}")
    pos = torch.arange(T, device=idx.device)
    x = model.drop(model.tok_emb(idx) + model.pos_emb(pos))
    for block in model.blocks:
        x = block(x)
    return model.lm_head(model.ln_f(x))


def text_overhead(rounds: int) -> dict[str, object]:
    profile = load_profile("shakespeare_char", ["model.attention=sdpa"])
    torch.manual_seed(0)
    model = ModelBuilder(profile, 65).build().model
    idx = torch.randint(0, 65, (12, profile.model.block_size))

    def new() -> None:
        model(idx).logits.square().mean().backward()

    def old() -> None:
        old_forward(model, idx).square().mean().backward()

    def seconds(fn: Callable[[], None]) -> Callable[[], float]:
        def run() -> float:  # 20 steps per sample, so that one sample outlasts scheduler noise
            start = time.perf_counter()
            for _ in range(20):
                fn()
            return time.perf_counter() - start
        return run

    old()
    times = interleave({"new": seconds(new), "old": seconds(old)}, rounds)
    return {"ratio_new_over_old_speed": round(paired_ratio(times, "old", "new"), 4),
            "note": "forward+backward, batch 12 x 64 tokens, 4x128 sdpa; >1 means the new forward is faster"}


def main() -> None:
    p = arguments(__doc__.splitlines()[0])
    p.add_argument("--skip-tasks", action="store_true", help="only the throughput parts (no training)")
    args = p.parse_args()
    torch.set_num_threads(2)
    results: dict[str, object] = {"text_only_overhead": text_overhead(args.rounds), "encoders": encoders(args.rounds)}
    if not args.skip_tasks:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            results["digits_caption"] = {**task("digits_caption", "digits", "digits", root),
                                         "target": ">= 0.95 held-out caption accuracy"}
            results["spoken_digits"] = {**task("spoken_digits", "spoken-digits", "spoken", root),
                                        "target": ">= 0.90 held-out (unseen voices) transcription accuracy"}
    results["load_avg_at_end"] = os.getloadavg()
    write(args.out, "multimodal_bench", results)


if __name__ == "__main__":
    main()
