"""A provider or the data loader raising mid-run: one line naming the culprit and its file:line,
a record in the error store, an emergency checkpoint, and --resume auto carrying on from it."""

import json

import pytest

from apt.errors import RunError
from apt.errorstore import ErrorStore
from apt.hookspecs import hookimpl
from apt.profile import load_profile
from apt.testing import make_distribution
from apt.trainer import Trainer
from apt.trust import TrustStore
from core_cli import SMALL, assert_one_line_error, run

#: An FFN that raises in forward (or in its autograd backward) at the training step BOOM_AT_STEP names.
BOOM = '''
import os

from apt.builtin.layers import DenseFFN
from apt.providers import FFNProvider

STEPS = {"n": 0}


def due(training):
    if not training:
        return False
    STEPS["n"] += 1
    return STEPS["n"] == int(os.environ.get("BOOM_AT_STEP", "0"))


class Boom(FFNProvider):
    """Dense FFN that fails on purpose."""

    name = "boom"

    def build(self, dims, layer):
        import torch

        class Explode(torch.autograd.Function):
            @staticmethod
            def forward(ctx, x):
                return x.clone()

            @staticmethod
            def backward(ctx, grad):
                raise ValueError("boom in backward")

        class Module(DenseFFN):
            def forward(self, x):
                if due(self.training) and layer == 0:
                    if os.environ.get("BOOM_IN") == "backward":
                        return Explode.apply(super().forward(x))
                    raise RuntimeError(f"boom at step {STEPS['n']}")
                return super().forward(x)

        return Module(dims, 4 * dims.d_model)
'''
RAISE_LINE = next(i for i, line in enumerate(BOOM.splitlines(), 1) if "boom at step" in line)
ARGS = ["train", "-p", "tiny_debug", *SMALL, "--set", "model.ffn=boom", "--set", "train.max_iters=10",
        "--set", "train.eval_interval=100", "--set", "checkpoint.every=4", "--set", "train.threads=1"]


def boom_site(tmp_path):
    return make_distribution(tmp_path / "site", "fakeprov-boom", entry_points={
        "apt.providers": {"ffn.boom": "fakeprov_boom:Boom"}}, modules={"fakeprov_boom.py": BOOM})


def step_losses(run_dir):
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in records if r["event"] == "step"]


def test_provider_raising_in_forward_is_contained_and_resumable(tmp_path, env):
    site = boom_site(tmp_path)
    env["PYTHONPATH"] = str(site)
    TrustStore().add("fakeprov-boom")  # in-process behaviour under test; test_jail.py covers the sandbox
    crashed_dir, full_dir = tmp_path / "crashed", tmp_path / "full"
    crashed = run([*ARGS, "--set", f"checkpoint.dir={crashed_dir}"], env={**env, "BOOM_AT_STEP": "7"}, cwd=tmp_path)
    emergency = crashed_dir / "checkpoints" / "step-00000006.pt"
    assert_one_line_error(crashed, f"step 7: ffn.boom raised RuntimeError: boom at step 7 at "
                                   f"{site / 'fakeprov_boom.py'}:{RAISE_LINE} (in forward); emergency checkpoint "
                                   f"{emergency} holds step 6", code=1)
    assert emergency.is_file()

    listed = json.loads(run(["errors", "list", "--json"], env=env, cwd=tmp_path).stdout)
    assert len(listed) == 1
    error = listed[0]
    assert (error["type"], error["plugin"], error["step"]) == ("crash", "ffn.boom", 7)
    assert error["message"] == (f"ffn.boom raised RuntimeError: boom at step 7 "
                                f"(in forward at {site / 'fakeprov_boom.py'}:{RAISE_LINE})")
    assert error["context"]["phase"] == "forward" and error["context"]["checkpoint"] == str(emergency)
    assert "RuntimeError: boom at step 7" in error["traceback"]
    assert f"details: apt errors show {error['id']}" in crashed.stderr
    shown = run(["errors", "show", str(error["id"])], env=env, cwd=tmp_path)
    assert shown.returncode == 0 and "RuntimeError: boom at step 7" in shown.stdout
    assert f"run:        {error['run_id']}" in shown.stdout

    resumed = run([*ARGS, "--set", f"checkpoint.dir={crashed_dir}", "--resume", "auto"], env=env, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from {emergency} at step 6" in resumed.stdout
    full = run([*ARGS, "--set", f"checkpoint.dir={full_dir}"], env=env, cwd=tmp_path)
    assert full.returncode == 0, full.stderr
    assert step_losses(crashed_dir) == step_losses(full_dir)
    assert [s for s, _ in step_losses(crashed_dir)] == list(range(1, 11))


def _profile(tmp_path, *sets):
    return load_profile("tiny_debug", [
        "model.n_layer=1", "model.d_model=32", "model.block_size=16", "model.attention=sdpa", "train.batch_size=4",
        "train.max_iters=8", "train.eval_interval=100", "train.eval_iters=1", "checkpoint.every=100",
        "logging.progress=false", f"checkpoint.dir={tmp_path / 'run'}", *sets])


def test_provider_raising_in_backward_is_named(tmp_path, on_path, monkeypatch):
    on_path(boom_site(tmp_path))
    monkeypatch.setenv("BOOM_AT_STEP", "3")
    monkeypatch.setenv("BOOM_IN", "backward")
    with pytest.raises(RunError) as caught:
        Trainer(_profile(tmp_path, "model.ffn=boom"), echo=lambda s: None).run()
    message = str(caught.value)
    assert message.startswith("step 3: ffn.boom raised ValueError: boom in backward at ")
    assert f"{tmp_path / 'site' / 'fakeprov_boom.py'}:" in message and "(in backward)" in message
    assert "holds step 2" in message and "\n" not in message
    assert (tmp_path / "run" / "checkpoints" / "step-00000002.pt").is_file()
    [error] = ErrorStore().list()
    assert (error["plugin"], error["step"], error["context"]["phase"]) == ("ffn.boom", 3, "backward")


def test_data_loader_error_is_contained(tmp_path):
    trainer = Trainer(_profile(tmp_path), echo=lambda s: None)
    real_get = trainer.batches.get

    def flaky_get(step, micro=0):
        if step == 4:
            raise OSError("disk went away")
        return real_get(step, micro)

    trainer.batches.get = flaky_get
    with pytest.raises(RunError, match=r"^step 5: data loader raised OSError: disk went away at .*test_crash\.py:\d+ "
                                       r"\(in data\); emergency checkpoint .*step-00000004\.pt holds step 4"):
        trainer.run()
    [error] = ErrorStore().list()
    assert (error["type"], error["plugin"], error["step"]) == ("crash", None, 5)
    assert error["context"]["culprit"] == "data loader"
    resumed = Trainer(_profile(tmp_path), echo=lambda s: None, resume="auto")
    assert resumed.step == 4 and resumed.run().step == 8


def test_no_emergency_checkpoint_before_the_first_step(tmp_path):
    trainer = Trainer(_profile(tmp_path), echo=lambda s: None)

    def broken(step, micro=0):
        raise OSError("unreadable")

    trainer.batches.get = broken
    with pytest.raises(RunError, match="no step had completed"):
        trainer.run()
    assert not (tmp_path / "run" / "checkpoints").exists()


class FailsAtStepTwo:
    @hookimpl
    def apt_step_end(self, step):
        if step == 2:
            raise KeyError("missing metric")


def test_hook_errors_carry_the_step_they_happened_in(tmp_path):
    trainer = Trainer(_profile(tmp_path), echo=lambda s: None)
    trainer.host.register(FailsAtStepTwo(), "fails")
    assert trainer.run().stop_reason == "finished"
    [error] = ErrorStore().list()
    assert (error["type"], error["plugin"], error["step"]) == ("hook_error", "fails", 2)


def test_no_emergency_checkpoint_once_the_optimizer_has_moved_the_weights(tmp_path):
    trainer = Trainer(_profile(tmp_path, "checkpoint.every=2"), echo=lambda s: None)
    real_step = trainer.scaler.step

    def step_then_fail(optimizer):
        real_step(optimizer)
        if trainer.step == 2:
            raise RuntimeError("optimizer state went bad")

    trainer.scaler.step = step_then_fail
    with pytest.raises(RunError, match=r"^step 3: apt raised RuntimeError: optimizer state went bad at .*"
                                       r"\(in update\); no emergency checkpoint: the optimizer had already"):
        trainer.run()
    assert [p.name for p in (tmp_path / "run" / "checkpoints").glob("step-*.pt")] == ["step-00000002.pt"]
