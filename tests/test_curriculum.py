"""Curriculum schedules switching training plugins on, through the CLI (moe_reasoning_small)."""

import json
import re

import pytest

from core_cli import kill_after_steps, run

pytest.importorskip("apt_plugin_moe")
pytest.importorskip("apt_plugin_align")

TINY = ["--set", "model.n_layer=2", "--set", "model.d_model=32", "--set", "model.block_size=16",
        "--set", "train.batch_size=4", "--set", "train.epoch_iters=6", "--set", "train.eval_interval=6",
        "--set", "train.eval_iters=2", "--set", "train.lr_decay_iters=24", "--set", "checkpoint.every=3",
        "--set", "logging.progress=false", "--set", "train.warmup_iters=3"]


def records(run_dir, event):
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["event"] == event]


def test_moe_switches_on_at_epoch_two_and_follows_its_schedule(tmp_path, env):
    run_dir = tmp_path / "full"
    out = run(["train", "-p", "moe_reasoning_small", *TINY, "--set", "train.max_iters=24", "--set", "model.align=null",
               "--set", f"checkpoint.dir={run_dir}"], env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert re.search(r"^epoch 1/4 \(steps 1-6\) \|.* moe: off \| .*moe_capacity=1.5 \| route_temp=1.5$", out.stdout, re.M)
    assert re.search(r"^epoch 2/4 \(steps 7-12\) \|.* moe: on \| .*moe_capacity=1.367 \| route_temp=1.267$", out.stdout, re.M)
    assert "moe: switched on at epoch 2; 4 experts upcycled from the dense FFN" in out.stdout
    steps = records(run_dir, "step")
    assert [s["moe.enabled"] for s in steps] == [False] * 6 + [True] * 18
    assert all("aux.router.topk_moe" not in s for s in steps[:6])
    by_epoch = {s["epoch"]: s for s in steps[6:]}
    expected_capacity = {2: 1.5 - 0.4 / 3, 3: 1.5 - 0.8 / 3, 4: 1.1}
    expected_temp = {2: 1.5 - 0.7 / 3, 3: 1.5 - 1.4 / 3, 4: 0.8}
    for epoch in (2, 3, 4):
        assert by_epoch[epoch]["moe.capacity"] == pytest.approx(expected_capacity[epoch])
        assert by_epoch[epoch]["moe.route_temp"] == pytest.approx(expected_temp[epoch])
    last = steps[-1]
    assert len(last["moe.expert_frac"]) == 4 and sum(last["moe.expert_frac"]) == pytest.approx(1.0, abs=1e-4)  # 5 decimals each
    assert 0.0 <= last["moe.dropped_frac"] < 1.0 and last["aux.router.topk_moe"] > 0
    epochs = records(run_dir, "epoch")
    assert [e["enabled.moe"] for e in epochs] == [False, True, True, True]

    part = tmp_path / "part"
    first = run(["train", "-p", "moe_reasoning_small", *TINY, "--set", "train.max_iters=6", "--set", "model.align=null",
                 "--set", f"checkpoint.dir={part}"], env=env, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    resumed = run(["train", "-p", "moe_reasoning_small", *TINY, "--set", "train.max_iters=24", "--set",
                   "model.align=null", "--set", f"checkpoint.dir={part}", "--resume", "auto"], env=env, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout and "upcycled" in resumed.stdout
    assert [(s["step"], s["loss"], s.get("moe.expert_frac")) for s in records(part, "step")] == \
           [(s["step"], s["loss"], s.get("moe.expert_frac")) for s in steps]


def test_align_joins_at_epoch_three_and_sigkill_resume_replays_everything(tmp_path, env):
    import subprocess
    import sys

    args = ["train", "-p", "moe_reasoning_small", *TINY, "--set", "train.max_iters=24", "--set", "checkpoint.every=1",
            "--set", "schedules.align_weight.warmup=12", "--set", "schedules.align_weight.span=12"]
    full = tmp_path / "full"
    out = run([*args, "--set", f"checkpoint.dir={full}"], env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    steps = records(full, "step")
    # align switches on with epoch 3 (step 13), where its weight ramp is still at 0: no work until step 14
    assert [("align.loss" in s) for s in steps] == [False] * 13 + [True] * 11
    weights = [s["align.weight"] for s in steps[13:]]
    assert weights == pytest.approx([0.3 * i / 12 for i in range(1, 12)])
    assert all(s["align.loss"] == pytest.approx(s["align.weight"] * (0.35 * s["align.anchor"] + 0.2 * 0.15 ** 2 * s["align.kl"]), rel=1e-4)
               for s in steps[13:])
    assert [s["moe.enabled"] for s in steps] == [False] * 6 + [True] * 18

    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "apt", *args, "--set", f"checkpoint.dir={killed}"], env=env,
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kill_after_steps(proc, killed, 14)
    resumed = run([*args, "--set", f"checkpoint.dir={killed}", "--resume", "auto"], env=env, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    step = int(re.search(r"at step (\d+)", resumed.stdout).group(1))
    assert 13 <= step < 24, "killed mid-way through epoch 3 or later"
    keys = ("step", "loss", "moe.expert_frac", "align.loss", "align.weight")
    assert [tuple(s.get(k) for k in keys) for s in records(killed, "step")] == [tuple(s.get(k) for k in keys) for s in steps]


def test_full_size_profile_validates_with_a_dry_run(tmp_path, env):
    out = run(["train", "-p", "gpt5_moe_reasoning", "--dry-run"], env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert re.search(r"^profile gpt5_moe_reasoning: 7,\d{3},\d{3},\d{3} parameters \| attention tva 2\.0\.0, ffn dense "
                     r"2\.0\.0, router topk_moe 1\.0\.0, align bistate", out.stdout, re.M), out.stdout
    assert "plan: 200000 steps, 20000 per epoch, 10 epochs" in out.stdout
    assert re.search(r"^  epoch 3: steps 40001-60000  enabled.align=on enabled.moe=on", out.stdout, re.M)
    assert not (tmp_path / "runs").exists()
