"""Trainer data integrity through the real CLI: checksums, resume fallback, best.pt as a resume
source, refusing to mix runs, no duplicated metrics lines, and disk full on a small tmpfs."""

import json
import logging
import os
import shutil
import struct
import subprocess
import zipfile
from pathlib import Path

import pytest
import torch

from apt import checkpoint as ckpt
from apt.errors import CheckpointError
from core_cli import SMALL, assert_one_line_error, run

BASE = ["train", "-p", "tiny_debug", *SMALL, "--set", "train.threads=1"]


def train(run_dir: Path, env, cwd: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return run([*BASE, "--set", f"checkpoint.dir={run_dir}", *extra], env=env, cwd=cwd)


def sets(**values: object) -> list[str]:
    out: list[str] = []
    for key, value in values.items():
        out += ["--set", f"{key.replace('__', '.')}={value}"]
    return out


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def curve(run_dir: Path) -> list[tuple]:
    """Every metrics record in order, without the timing that differs between runs."""
    return [tuple(sorted((k, v) for k, v in r.items() if k != "tokens_per_s")) for r in records(run_dir)]


def flip_tensor_bytes(path: Path, count: int = 16) -> None:
    """Invert ``count`` bytes in the middle of the largest tensor stored in a checkpoint."""
    with zipfile.ZipFile(path) as archive:
        entry = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    assert entry.compress_type == zipfile.ZIP_STORED and entry.file_size > 4 * count
    raw = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", raw[entry.header_offset + 26:entry.header_offset + 30])
    start = entry.header_offset + 30 + name_len + extra_len + entry.file_size // 2
    for i in range(start, start + count):
        raw[i] ^= 0xFF
    path.write_bytes(bytes(raw))


def test_flipped_bytes_are_detected_and_resume_falls_back(tmp_path, env):
    args = sets(train__max_iters=20, train__eval_interval=10, checkpoint__every=5, checkpoint__keep_last=3)
    full, damaged = tmp_path / "full", tmp_path / "damaged"
    assert train(full, env, tmp_path, *args).returncode == 0
    assert train(damaged, env, tmp_path, *args).returncode == 0
    folder = damaged / "checkpoints"
    newest, best = folder / "step-00000020.pt", folder / "best.pt"
    flip_tensor_bytes(newest)
    flip_tensor_bytes(best)
    assert torch.load(newest, weights_only=True)["step"] == 20  # torch itself notices nothing

    with pytest.raises(CheckpointError, match=r"step-00000020\.pt is damaged: .*sha256"):
        ckpt.load(newest)
    text = tmp_path / "eval.txt"
    text.write_text("To be, or not to be, that is the question.\n")
    evaluated = run(["eval", "--checkpoint", str(newest), "--data", str(text)], env=env, cwd=tmp_path)
    assert_one_line_error(evaluated, f"checkpoint {newest} is damaged")

    resumed = train(damaged, env, tmp_path, *args, "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from {folder / 'step-00000015.pt'} at step 15" in resumed.stdout
    skipped = [line for line in resumed.stderr.splitlines() if "resume: skipped" in line]
    assert len(skipped) == 2 and all("sha256 checksum" in line for line in skipped), resumed.stderr
    assert any(str(newest) in line for line in skipped) and any(str(best) in line for line in skipped)
    assert curve(damaged) == curve(full)
    assert ckpt.load(newest)["step"] == 20


def test_resume_from_only_best_pt_keeps_metrics_and_best(tmp_path, env):
    common = sets(train__lr_decay_iters=40, train__eval_interval=10, checkpoint__every=10)
    full, part = tmp_path / "full", tmp_path / "part"
    assert train(full, env, tmp_path, *common, *sets(train__max_iters=40)).returncode == 0
    assert train(part, env, tmp_path, *common, *sets(train__max_iters=20)).returncode == 0
    best = part / "checkpoints" / "best.pt"
    best_step = ckpt.load(best)["step"]
    for _, path in ckpt.step_checkpoints(part):
        path.unlink()

    resumed = train(part, env, tmp_path, *common, *sets(train__max_iters=40), "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from {best} at step {best_step}" in resumed.stdout
    assert curve(part) == curve(full)  # the first run's lines are kept, none twice
    evals = [(r["val_loss"], r["step"]) for r in records(part) if r["event"] == "eval"]
    state = ckpt.load(best)
    assert (state["best_val_loss"], state["step"]) == min(evals)


def test_fresh_train_refuses_to_mix_runs_and_overwrite_starts_over(tmp_path, env):
    args = sets(train__max_iters=4, train__eval_interval=2, checkpoint__every=2)
    run_dir = tmp_path / "run"
    assert train(run_dir, env, tmp_path, *args).returncode == 0
    before = {p: p.read_bytes() for p in [run_dir / "metrics.jsonl", *(run_dir / "checkpoints").iterdir()]}

    again = train(run_dir, env, tmp_path, *args)
    assert_one_line_error(again, f"{run_dir} already holds a run")
    assert "--resume auto" in again.stderr and "--overwrite" in again.stderr
    assert {p: p.read_bytes() for p in before} == before

    both = train(run_dir, env, tmp_path, *args, "--overwrite", "--resume", "auto")
    assert_one_line_error(both, "pass only one of them")

    fresh = train(run_dir, env, tmp_path, *args, "--overwrite")
    assert fresh.returncode == 0, fresh.stderr
    assert "--overwrite: removed the previous run" in fresh.stdout
    assert [r["step"] for r in records(run_dir) if r["event"] == "step"] == [1, 2, 3, 4]


def test_resume_at_an_epoch_boundary_writes_no_line_twice(tmp_path, env):
    args = sets(train__max_iters=20, train__epoch_iters=5, train__eval_interval=10, checkpoint__every=5,
                checkpoint__keep_last=10, checkpoint__keep_best="false")
    full, part = tmp_path / "full", tmp_path / "part"
    assert train(full, env, tmp_path, *args).returncode == 0
    assert train(part, env, tmp_path, *args).returncode == 0
    for step in (15, 20):  # as if killed after step 10's checkpoint, with epoch 3's line already logged
        (part / "checkpoints" / f"step-{step:08d}.pt").unlink()
    assert any(r["event"] == "epoch" and r["step"] == 10 for r in records(part))

    resumed = train(part, env, tmp_path, *args, "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr
    assert "at step 10" in resumed.stdout
    keys = [(r["event"], r["step"]) for r in records(part)]
    assert len(keys) == len(set(keys))
    assert curve(part) == curve(full)


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs: room for a few checkpoints of the SMALL model, then ENOSPC."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=False)


def test_disk_full_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, env, small_disk):
    run_dir = small_disk / "run"
    args = sets(train__max_iters=400, train__eval_interval=1000, checkpoint__every=2, checkpoint__keep_last=1000)
    result = train(run_dir, env, tmp_path, *args)
    assert_one_line_error(result, "disk full while writing", code=1)
    saved = ckpt.step_checkpoints(run_dir)
    assert saved, "the disk must hold at least one checkpoint before it fills"
    last_step, last = saved[-1]
    failed = run_dir / "checkpoints" / f"step-{last_step + 2:08d}.pt"
    line = next(line for line in result.stderr.splitlines() if line.startswith("apt: error:"))
    assert f"writing {failed}:" in line and " free in " in line and "checkpoint.dir" in line
    assert not failed.exists()
    assert ckpt.load(last)["step"] == last_step  # intact and verified
    assert not [p.name for p in (run_dir / "checkpoints").iterdir() if ".tmp" in p.name]

    for _, older in saved[:-1]:  # the user frees space, then continues
        older.unlink()
    resumed = train(run_dir, env, tmp_path, *args, *sets(train__max_iters=last_step + 2), "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from {last} at step {last_step}" in resumed.stdout


def test_checkpoints_without_a_checksum_load_with_a_warning(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(logging.getLogger("apt"), "propagate", True)
    legacy = tmp_path / "legacy.pt"
    torch.save({"format": ckpt.FORMAT, "format_version": 1, "step": 3, "w": torch.ones(4)}, legacy)
    with caplog.at_level(logging.WARNING, logger="apt"):
        assert ckpt.load(legacy)["step"] == 3
    assert "predates checksums" in caplog.text and str(legacy) in caplog.text

    stripped = tmp_path / "stripped.pt"
    torch.save({k: v for k, v in torch.load(legacy, weights_only=True).items()} | {"format_version": 2}, stripped)
    with pytest.raises(CheckpointError, match=r"stripped\.pt is damaged: .*'sha256' checksum .* missing"):
        ckpt.load(stripped)


@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor:UserWarning")
def test_digest_covers_structure_and_survives_a_round_trip(tmp_path):
    quantized = torch.quantize_per_tensor(torch.linspace(-1, 1, 8), 0.01, 0, torch.qint8)
    state = {"step": 1, "t": (1, 2.5, None, True), "m": {0: torch.arange(6).reshape(2, 3).t()},
             "q": quantized, "bf": torch.ones(3, dtype=torch.bfloat16), "dtype": torch.float16}
    path = ckpt.save_file(tmp_path / "model.pt", state)
    assert ckpt.load(path)["sha256"] == ckpt.payload_digest(ckpt.load(path))
    stamped = ckpt.load(path)
    for changed in ({**stamped, "t": [1, 2.5, None, True]}, {**stamped, "t": (1, 2.5, None, 1)},
                    {**stamped, "step": 2}, {**stamped, "bf": torch.ones(1, 3, dtype=torch.bfloat16)}):
        assert ckpt.payload_digest(changed) != stamped["sha256"]


def test_latest_orders_best_pt_by_step_and_refuses_when_nothing_verifies(tmp_path):
    for step in (2, 3, 4):
        ckpt.save(tmp_path, {"step": step, "w": torch.full((64,), float(step))}, keep_last=2, best=step == 3)
    folder = tmp_path / "checkpoints"
    assert ckpt.latest(tmp_path).path == folder / "step-00000004.pt"
    flip_tensor_bytes(folder / "step-00000004.pt")
    found = ckpt.latest(tmp_path)
    assert found.path == folder / "step-00000003.pt", "at equal steps the step file is preferred"
    assert [(path.name, reason.split(":")[0]) for path, reason in found.skipped] == [
        ("step-00000004.pt", "is damaged")]
    (folder / "step-00000003.pt").write_bytes(b"torn")
    found = ckpt.latest(tmp_path)
    assert found.path == folder / "best.pt" and found.state is not None and found.state["step"] == 3
    flip_tensor_bytes(folder / "best.pt")
    with pytest.raises(CheckpointError, match=r"no checkpoint in .* can be resumed: best\.pt is damaged.*--overwrite"):
        ckpt.latest(tmp_path)
    assert ckpt.latest(tmp_path / "elsewhere").path is None
