"""The arithmetic of a training step: LR schedule, gradient accumulation and bf16 autocast.

Each test drives the real :class:`apt.trainer.Trainer` and compares against numbers worked out
by hand or against a second run that must agree with it.
"""

import math

import pytest
import torch
from torch import nn

from apt.batch import Batch
from apt.data import Batches
from apt.profile import load_profile
from apt.trainer import Trainer

BASE = ["model.n_layer=1", "model.d_model=32", "model.n_head=2", "model.block_size=16", "model.attention=sdpa",
        "model.dropout=0", "train.eval_iters=1", "train.eval_interval=1000", "logging.progress=false"]


def trainer(tmp_path, *sets: str) -> Trainer:
    return Trainer(load_profile("tiny_debug", [*BASE, f"checkpoint.dir={tmp_path / 'run'}", *sets]),
                   echo=lambda s: None)


def test_lr_warms_up_linearly_then_decays_by_cosine_to_min_lr(tmp_path):
    t = trainer(tmp_path, "train.lr=1e-3", "train.min_lr=1e-4", "train.warmup_iters=4", "train.lr_decay_iters=24",
                "train.max_iters=30", "train.batch_size=2")
    expected = {
        0: 1e-3 * 1 / 5,  # warmup: lr * (step + 1) / (warmup + 1)
        2: 1e-3 * 3 / 5,
        3: 1e-3 * 4 / 5,
        4: 1e-3,  # end of warmup: the peak
        9: 1e-4 + 0.5 * (1 + math.sqrt(0.5)) * 9e-4,  # a quarter of the decay: cos(pi / 4)
        14: (1e-3 + 1e-4) / 2,  # half-way through the decay
        24: 1e-4,  # at lr_decay_iters
        29: 1e-4,  # and past it
    }
    assert {step: t.lr_at(step) for step in expected} == pytest.approx(expected, rel=1e-12)
    assert t.lr_at(9) == pytest.approx(8.681980515339464e-4, rel=1e-12)

    seen: list[list[float]] = []
    t.optimizer.register_step_pre_hook(lambda opt, args, kwargs: seen.append([g["lr"] for g in opt.param_groups]))
    logged = [t.train_step()["lr"] for _ in range(6)]
    assert len(seen) == 6 and all(len(groups) == 2 for groups in seen)
    assert seen == [[pytest.approx(t.lr_at(s), rel=1e-12)] * 2 for s in range(6)]
    assert logged == pytest.approx([2e-4, 4e-4, 6e-4, 8e-4, 1e-3, t.lr_at(5)], rel=1e-12)


def fixed_sequences(t: Trainer, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    return Batches(t.corpus.train, t.profile.model.block_size, n, seed=2024).get(0, stream="fixed")


def feed(t: Trainer, x: torch.Tensor, y: torch.Tensor) -> None:
    """Make micro-batch ``m`` of every step the ``m``-th slice of (x, y), so two runs see the same data."""
    size = t.profile.train.batch_size
    t._batch = lambda micro: Batch(x[micro * size:(micro + 1) * size], y[micro * size:(micro + 1) * size])


def one_step(tmp_path, name: str, batch_size: int, grad_accum: int, x, y) -> tuple[dict, dict, list[torch.Tensor]]:
    t = trainer(tmp_path / name, f"train.batch_size={batch_size}", f"train.grad_accum={grad_accum}",
                "train.grad_clip=0", "train.warmup_iters=0", "train.max_iters=10", "train.lr=1e-3")
    feed(t, x, y)
    grads: dict[str, torch.Tensor] = {}
    names = {p: n for n, p in t.model.named_parameters()}
    t.optimizer.register_step_pre_hook(lambda opt, args, kwargs: grads.update(
        {names[p]: p.grad.detach().clone() for g in opt.param_groups for p in g["params"]}))
    metrics = t.train_step()
    return metrics, grads, [p.detach().clone() for p in t.model.parameters()]


def test_four_micro_batches_of_three_make_the_same_update_as_one_batch_of_twelve(tmp_path):
    x, y = fixed_sequences(trainer(tmp_path / "data", "train.batch_size=1"), 12)
    m_acc, g_acc, w_acc = one_step(tmp_path, "accum", 3, 4, x, y)
    m_one, g_one, w_one = one_step(tmp_path, "whole", 12, 1, x, y)
    assert m_acc["loss"] == pytest.approx(m_one["loss"], rel=1e-6)
    assert m_acc["grad_norm"] == pytest.approx(m_one["grad_norm"], rel=1e-5)
    assert g_acc.keys() == g_one.keys() and len(g_acc) > 0
    for name in g_one:
        torch.testing.assert_close(g_acc[name], g_one[name], rtol=1e-4, atol=1e-7, msg=name)
    for a, b in zip(w_acc, w_one, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def linear_output_dtypes(t: Trainer) -> list[torch.dtype]:
    dtypes: list[torch.dtype] = []
    for module in t.model.modules():
        if isinstance(module, nn.Linear):
            module.register_forward_hook(lambda mod, inputs, output: dtypes.append(output.dtype))
    t.train_step()
    return dtypes


@pytest.mark.parametrize("precision, dtype", [("bf16", torch.bfloat16), ("fp32", torch.float32)])
def test_train_step_runs_linear_layers_in_the_configured_precision(tmp_path, precision, dtype):
    t = trainer(tmp_path, f"train.precision={precision}", "train.batch_size=2", "train.max_iters=4")
    dtypes = linear_output_dtypes(t)
    assert len(dtypes) >= 2 and set(dtypes) == {dtype}
    assert all(p.dtype == torch.float32 for p in t.model.parameters()), "autocast keeps the weights in fp32"
