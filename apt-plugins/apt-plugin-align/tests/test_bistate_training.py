import json
from pathlib import Path

import pytest

from apt import checkpoint as ckpt
from apt.profile import load_profile
from apt.trainer import Trainer
from apt_plugin_align.provider import BistateConfig

ALIGN_METRICS = {"align.loss", "align.weight", "align.anchor", "align.kl"}


def profile(run_dir: Path, max_iters: int):
    return load_profile("tiny_debug", [
        "model.n_layer=1", "model.d_model=32", "model.block_size=16", "model.attention=sdpa",
        "model.align=bistate", "model.dropout=0.1", "schedules.enable_align_at_epoch=2",
        "schedules.align_weight={start: 0.0, end: 1.0, by: step, span: 5}",
        "train.epoch_iters=3", f"train.max_iters={max_iters}", "train.lr_decay_iters=6", "train.batch_size=4",
        "train.warmup_iters=1", "train.eval_interval=100", "train.eval_iters=1", "checkpoint.every=1",
        "checkpoint.keep_last=10", f"checkpoint.dir={run_dir}", "logging.progress=false",
    ])


def steps(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["event"] == "step"]


def run(run_dir: Path, max_iters: int, resume: str | None = None) -> list[dict]:
    Trainer(profile(run_dir, max_iters), echo=lambda s: None, resume=resume).run()
    return steps(run_dir)


@pytest.mark.slow
def test_off_in_epoch_one_on_in_epoch_two_and_resume_keeps_it(tmp_path):
    full = run(tmp_path / "full", 6)
    assert [r["epoch"] for r in full] == [1, 1, 1, 2, 2, 2]
    assert all(not ALIGN_METRICS & set(r) and "aux.align.bistate" not in r for r in full[:3])
    c = BistateConfig()
    for r in full[3:]:
        assert ALIGN_METRICS <= set(r)
        assert r["align.weight"] == pytest.approx((r["step"] - 1) / 5)
        assert r["align.anchor"] > 0 and r["align.kl"] > 0
        unweighted = c.alpha * r["align.anchor"] + c.beta * c.tau_align**2 * r["align.kl"]
        assert r["align.loss"] == pytest.approx(r["align.weight"] * unweighted, rel=1e-5)
        assert r["aux.align.bistate"] == pytest.approx(r["align.loss"], rel=1e-6)

    part = tmp_path / "part"
    run(part, 4)
    assert "extras.align.vein" in ckpt.load(ckpt.step_checkpoints(part)[-1][1])["model"]
    resumed = run(part, 6, resume="auto")
    keys = ["step", "loss", *sorted(ALIGN_METRICS)]
    assert [[r.get(k) for k in keys] for r in resumed] == [[r.get(k) for k in keys] for r in full]
