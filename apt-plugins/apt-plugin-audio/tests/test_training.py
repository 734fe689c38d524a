"""The user's path end to end: synthesise a tiny spoken-digits corpus, train on it with ``apt train``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from apt_plugin_audio import spoken

SMALL = {"train_voices": ("en-us",), "val_voices": ("en-gb-scotland",), "variants": ("",),
         "speeds": (160,), "pitches": (50,), "train_per_digit": 1, "val_per_digit": 1}
PROFILE = """\
name: spoken_tiny
data: {{train_path: {data}/train.jsonl, val_path: {data}/val.jsonl, prepare: spoken-digits}}
model: {{n_layer: 1, n_head: 2, d_model: 32, block_size: 48, attention: sdpa, encoders: {{audio: logmel_conv}}}}
providers:
  encoder:
    logmel_conv: {{layers: 1, heads: 2, pool: 3}}
train: {{max_iters: 3, batch_size: 4, eval_interval: 3, eval_iters: 1, warmup_iters: 1, device: cpu}}
checkpoint: {{dir: {run}, every: 3}}
logging: {{tensorboard: false, progress: false}}
"""


@pytest.mark.slow
def test_apt_train_on_spoken_digits(espeak_ng: str, tmp_path: Path, apt_home: Path) -> None:
    apt = shutil.which("apt", path=str(Path(sys.executable).parent))
    if apt is None:
        pytest.skip("the apt command is not installed next to this interpreter")
    data, run = tmp_path / "spoken", tmp_path / "run"
    assert spoken.synthesise(data, spoken.plan(0, **SMALL), workers=2) == {"train": 10, "val": 10}
    profile = tmp_path / "spoken_tiny.yaml"
    profile.write_text(PROFILE.format(data=data, run=run))
    env = {**os.environ, "APT_HOME": str(apt_home), "PYTHONUNBUFFERED": "1"}
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([apt, "train", "-p", str(profile)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "encoder.audio logmel_conv" in proc.stdout
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if r.get("event") == "step"]
    assert len(losses) == 3 and all(0 < v < 10 for v in losses), losses
