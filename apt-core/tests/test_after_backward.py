"""``apt_after_backward``: once per optimizer step under accumulation, gradients unscaled and unclipped."""

import copy
import json

import pytest
import torch

from apt.hookspecs import hookimpl
from apt.model import cross_entropy
from apt.profile import load_profile
from apt.trainer import Trainer


class GradWatch:
    def __init__(self):
        self.steps = []
        self.micro_batches = 0
        self.grads = []

    @hookimpl
    def apt_extra_losses(self):
        self.micro_batches += 1

    @hookimpl
    def apt_after_backward(self, trainer, step):
        self.steps.append(step)
        self.grads.append({name: p.grad.clone() for name, p in trainer.model.named_parameters()
                           if p.grad is not None})


def test_fires_once_per_optimizer_step_with_unscaled_unclipped_gradients(tmp_path):
    profile = load_profile("tiny_debug", [
        "model.n_layer=1", "model.d_model=32", "model.block_size=16", "model.attention=sdpa", "train.batch_size=2",
        "train.grad_accum=4", "train.max_iters=3", "train.grad_clip=0.001", "train.eval_interval=100",
        "train.eval_iters=1", "logging.progress=false", f"checkpoint.dir={tmp_path / 'run'}"])
    trainer = Trainer(profile, echo=lambda s: None)
    # fp16 needs CUDA, but the CPU scaler exercises the same unscale path: a 1024x scale left
    # in the gradients would show as a 1024x mismatch with the reference below.
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    watch = GradWatch()
    trainer.host.register(watch, "gradwatch")
    reference = copy.deepcopy(trainer.model)
    batches = [trainer.batches.get(0, micro) for micro in range(4)]

    trainer.run()

    assert watch.steps == [1, 2, 3] and watch.micro_batches == 12
    for x, y in batches:
        (cross_entropy(reference(x).logits, y) / 4).backward()
    expected = {name: p.grad for name, p in reference.named_parameters() if p.grad is not None}
    assert expected.keys() == watch.grads[0].keys()
    for name, grad in expected.items():
        torch.testing.assert_close(watch.grads[0][name], grad, rtol=1e-4, atol=1e-7, msg=name)
    seen_norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in watch.grads[0].values()])).item()
    assert seen_norm > 100 * profile.train.grad_clip, "clipping to 0.001 must come after the hook"
    assert seen_norm == pytest.approx(_logged_grad_norm(tmp_path / "run", 1), rel=1e-5)


def _logged_grad_norm(run_dir, step):
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["event"] == "step" and record["step"] == step:
            return record["grad_norm"]
    raise AssertionError(f"no step {step} in metrics")
