import json
import math

import pytest
import torch

from apt.errors import CheckpointError, RunError
from apt.errorstore import ErrorStore
from apt.profile import load_profile
from apt.testing import make_distribution
from apt.trainer import Trainer

HOOKS = '''
import torch
from apt.hookspecs import hookimpl
EVENTS = []
COUNT = {"steps": 0}
BEHAVIOUR = %r

@hookimpl
def apt_train_start(trainer):
    EVENTS.append(("train_start", trainer.step))

@hookimpl
def apt_epoch_start(trainer, epoch):
    EVENTS.append(("epoch_start", epoch))

@hookimpl
def apt_step_start(trainer, step, batch):
    EVENTS.append(("step_start", step))

@hookimpl
def apt_extra_losses(trainer, batch, outputs):
    if BEHAVIOUR == "nan":
        return [outputs.logits.sum() * float("nan")]
    return {"const": torch.tensor(0.25), "zero": outputs.logits.sum() * 0.0}

@hookimpl
def apt_step_end(trainer, step, metrics):
    COUNT["steps"] += 1
    metrics["hook_steps"] = COUNT["steps"]
    EVENTS.append(("step_end", step))
    if BEHAVIOUR == "raise" and step == 3:
        raise RuntimeError("plugin bug")

@hookimpl
def apt_epoch_end(trainer, epoch, metrics):
    EVENTS.append(("epoch_end", epoch))

@hookimpl
def apt_train_end(trainer):
    EVENTS.append(("train_end", trainer.step))

@hookimpl
def apt_state_dict(trainer):
    return {"steps": COUNT["steps"]}

@hookimpl
def apt_load_state_dict(trainer, state):
    COUNT["steps"] = state["steps"]
'''


def install_hooks(tmp_path, on_path, behaviour="ok"):
    on_path(make_distribution(tmp_path / "site", "fakeprov-hooks", entry_points={
        "apt.plugins": {"recorder": "fakeprov_hooks"}}, modules={"fakeprov_hooks.py": HOOKS % behaviour}))
    import fakeprov_hooks
    return fakeprov_hooks


def steps(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
            if json.loads(line)["event"] == "step"]


def quiet(profile, **kw):
    return Trainer(profile, echo=lambda s: None, **kw)


def test_trains_checkpoints_and_logs(tiny_profile):
    result = quiet(tiny_profile).run()
    assert result.stop_reason == "finished" and result.step == 12
    records = steps(tiny_profile.run_dir)
    assert [r["step"] for r in records] == list(range(1, 13))
    assert records[-1]["loss"] < records[0]["loss"]
    names = sorted(p.name for p in (tiny_profile.run_dir / "checkpoints").iterdir())
    assert names == ["best.pt", "step-00000008.pt", "step-00000012.pt"]  # keep_last: 2
    assert math.isfinite(result.best_val_loss)


def test_hooks_fire_in_lifecycle_order_and_extra_losses_count(tmp_path, on_path, tiny_profile):
    hooks = install_hooks(tmp_path, on_path)
    profile = load_profile("tiny_debug", [f"{k}={v}" for k, v in {
        "model.n_layer": 1, "model.d_model": 32, "model.block_size": 16, "model.attention": "sdpa",
        "train.max_iters": 4, "train.epoch_iters": 2, "train.eval_interval": 100, "train.eval_iters": 1,
        "train.batch_size": 2, "checkpoint.dir": tmp_path / "r"}.items()])
    quiet(profile).run()
    assert hooks.EVENTS == [
        ("train_start", 0), ("epoch_start", 1), ("step_start", 1), ("step_end", 1), ("step_start", 2),
        ("step_end", 2), ("epoch_end", 1), ("epoch_start", 2), ("step_start", 3), ("step_end", 3),
        ("step_start", 4), ("step_end", 4), ("epoch_end", 2), ("train_end", 4)]
    record = steps(tmp_path / "r")[0]
    assert record["aux.recorder"] == pytest.approx(0.25) and record["hook_steps"] == 1


def test_failing_hook_disables_plugin_and_is_recorded(tmp_path, on_path, tiny_profile):
    install_hooks(tmp_path, on_path, "raise")
    result = quiet(tiny_profile).run()
    assert result.stop_reason == "finished" and result.step == 12
    records = steps(tiny_profile.run_dir)
    assert records[2]["hook_steps"] == 3 and "hook_steps" not in records[3]
    errors = ErrorStore().list()
    assert len(errors) == 1 and errors[0]["plugin"] == "recorder" and errors[0]["type"] == "hook_error"
    assert "plugin bug" in errors[0]["traceback"]


def test_required_plugin_failure_stops_with_emergency_checkpoint(tmp_path, on_path, tiny_profile):
    install_hooks(tmp_path, on_path, "raise")
    profile = load_profile("tiny_debug", ["model.attention=sdpa", "model.n_layer=1", "model.d_model=32",
                                          "model.block_size=16", "train.max_iters=12",
                                          f"checkpoint.dir={tmp_path / 'r'}", "plugins.recorder.required=true"])
    with pytest.raises(RunError, match="required plugin 'recorder' failed in apt_step_end.*emergency checkpoint"):
        quiet(profile).run()
    assert (tmp_path / "r" / "checkpoints" / "step-00000002.pt").exists()


def test_nonfinite_steps_are_skipped_then_stop(tmp_path, on_path, tiny_profile):
    install_hooks(tmp_path, on_path, "nan")
    trainer = quiet(tiny_profile)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    with pytest.raises(RunError, match="training diverged at step 5: 5 consecutive non-finite steps"):
        trainer.run()
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.model.parameters(), strict=True))
    assert [e["type"] for e in ErrorStore().list()] == ["nonfinite"] * 5


def test_resume_replays_the_same_losses_and_plugin_state(tmp_path, on_path, tiny_profile):
    hooks = install_hooks(tmp_path, on_path)
    full = tmp_path / "full"
    same_lr = ["train.lr_decay_iters=12"]  # a killed run had the same schedule as the full one
    quiet(load_profile("tiny_debug", _small(full, 12) + same_lr)).run()
    expected = [(r["step"], r["loss"], r["hook_steps"]) for r in steps(full)]
    hooks.COUNT["steps"] = 0
    part = tmp_path / "part"
    quiet(load_profile("tiny_debug", _small(part, 8) + same_lr)).run()
    hooks.COUNT["steps"] = 1000
    quiet(load_profile("tiny_debug", _small(part, 12) + same_lr), resume="auto").run()
    assert [(r["step"], r["loss"], r["hook_steps"]) for r in steps(part)] == expected


def test_resume_refuses_a_different_model(tmp_path, tiny_profile):
    quiet(tiny_profile).run()
    changed = load_profile("tiny_debug", _small(tiny_profile.run_dir, 20) + ["model.d_model=64"])
    with pytest.raises(CheckpointError, match="trained with model.d_model=32 but the profile now says 64"):
        quiet(changed, resume="auto")


def test_early_stopping_on_flat_validation(tmp_path):
    profile = load_profile("tiny_debug", _small(tmp_path / "r", 40) + [
        "train.lr=1e-9", "train.min_lr=0", "train.eval_interval=4", "train.patience=2"])
    result = quiet(profile).run()
    assert result.stop_reason.startswith("early stopping") and result.step == 12


def test_bf16_autocast_and_grad_accumulation_train(tmp_path):
    profile = load_profile("tiny_debug", _small(tmp_path / "r", 6) + ["train.precision=bf16", "train.grad_accum=2"])
    result = quiet(profile).run()
    assert result.step == 6 and math.isfinite(steps(tmp_path / "r")[-1]["loss"])


def _small(run_dir, iters):
    return ["model.n_layer=1", "model.d_model=32", "model.block_size=16", "model.attention=sdpa",
            f"train.max_iters={iters}", "train.batch_size=4", "train.eval_interval=4", "train.eval_iters=2",
            "train.warmup_iters=2", "checkpoint.every=4", f"checkpoint.dir={run_dir}"]


def test_tensorboard_events_hold_the_step_losses(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    profile = load_profile("tiny_debug", _small(tmp_path / "r", 4) + ["logging.tensorboard=true"])
    quiet(profile).run()
    events = EventAccumulator(str(tmp_path / "r" / "tb"))
    events.Reload()
    losses = [e.value for e in events.Scalars("step/loss")]
    assert [e.step for e in events.Scalars("step/loss")] == [1, 2, 3, 4]
    assert losses == pytest.approx([r["loss"] for r in steps(tmp_path / "r")])
    assert [e.step for e in events.Scalars("eval/val_loss")] == [4]


SWITCHED = '''
from dataclasses import dataclass
from apt.builtin.layers import DenseFFN
from apt.hookspecs import hookimpl
from apt.providers import FFNProvider

class Gated(FFNProvider):
    """Dense FFN whose output is zero while its curriculum switch is off."""
    name = "gated"
    switch = "gate"

    def build(self, dims, layer):
        import torch

        class Module(DenseFFN):
            enabled = True
            def forward(self, x):
                return super().forward(x) if self.enabled else torch.zeros_like(x)
        return Module(dims, 4 * dims.d_model)

    @hookimpl
    def apt_step_end(self, trainer, metrics):
        module = trainer.model.blocks[0].mlp
        metrics["gate_on"] = module.enabled
'''


def test_switch_state_is_right_after_a_mid_epoch_resume(tmp_path, on_path):
    on_path(make_distribution(tmp_path / "site", "fakeprov-gated", entry_points={
        "apt.providers": {"ffn.gated": "fakeprov_gated:Gated"}}, modules={"fakeprov_gated.py": SWITCHED}))
    sets = ["model.ffn=gated", "train.epoch_iters=4", "schedules.enable_gate_at_epoch=2", "train.lr_decay_iters=12",
            "checkpoint.every=1"]
    quiet(load_profile("tiny_debug", _small(tmp_path / "full", 12) + sets)).run()
    quiet(load_profile("tiny_debug", _small(tmp_path / "part", 6) + sets)).run()
    quiet(load_profile("tiny_debug", _small(tmp_path / "part", 12) + sets), resume="auto").run()
    full, part = steps(tmp_path / "full"), steps(tmp_path / "part")
    assert [r["gate_on"] for r in full] == [False] * 4 + [True] * 8
    assert [(r["step"], r["loss"], r["gate_on"]) for r in part] == [(r["step"], r["loss"], r["gate_on"]) for r in full]
