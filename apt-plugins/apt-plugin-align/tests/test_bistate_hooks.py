import logging
from types import SimpleNamespace

import pytest
import torch

from apt.model import ModelBuilder
from apt.profile import load_profile
from apt.schedules import Schedule
from apt_plugin_align.aligner import AlignState, BistateAligner

VOCAB = 11


def built(*overrides: str):
    profile = load_profile("tiny_debug", ["model.n_layer=1", "model.d_model=32", "model.block_size=8",
                                          "model.attention=sdpa", "model.align=bistate", *overrides])
    torch.manual_seed(0)
    b = ModelBuilder(profile, VOCAB).build()
    b.model.train()
    return b, b.instances["align.bistate"]


def trainer(model, schedule: dict | None = None, total_steps: int = 5, steps_per_epoch: int = 5) -> SimpleNamespace:
    return SimpleNamespace(model=model, schedule=Schedule(schedule, total_steps, steps_per_epoch), step=0)


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randint(1, VOCAB, (3, 8), generator=generator)
    return x, torch.roll(x, -1, dims=1)


def step(provider, t, b, outputs) -> tuple[torch.Tensor | None, dict]:
    t.model.extras["align"].enabled = t.schedule.enabled("align")  # what the trainer's curriculum does
    provider.apt_step_start()
    loss = provider.apt_extra_losses(trainer=t, batch=b, outputs=outputs)
    metrics: dict = {}
    provider.apt_step_end(metrics=metrics)
    return loss, metrics


def test_dropout_view_is_exactly_zero_without_dropout(caplog):
    with caplog.at_level(logging.WARNING, logger="apt"):
        b, provider = built("model.dropout=0.0")
    assert "model.dropout=0" in caplog.text
    t, x = trainer(b.model), batch()
    loss, metrics = step(provider, t, x, b.model(x[0]))
    assert loss.item() == 0.0
    assert metrics["align.loss"] == 0.0 and metrics["align.anchor"] == 0.0 and metrics["align.kl"] == 0.0


def test_dropout_view_draws_a_second_mask_and_trains_only_through_it():
    b, provider = built("model.dropout=0.1")
    t, x = trainer(b.model), batch()
    outputs = b.model(x[0])
    outputs.hidden.retain_grad()
    outputs.logits.retain_grad()
    loss, metrics = step(provider, t, x, outputs)
    assert loss.item() > 0 and metrics["align.anchor"] > 0 and metrics["align.kl"] > 0
    assert metrics["align.loss"] == pytest.approx(loss.item())
    loss.backward()
    assert outputs.hidden.grad is None and outputs.logits.grad is None
    assert b.model.tok_emb.weight.grad.abs().sum() > 0
    assert b.model.blocks[0].attn.qkv.weight.grad.abs().sum() > 0


def test_switched_off_costs_nothing_and_reports_nothing():
    b, provider = built("model.dropout=0.1")
    t, x = trainer(b.model, {"enable_align_at_epoch": 2}, total_steps=4, steps_per_epoch=2), batch()
    outputs = b.model(x[0])
    calls = []
    b.model.register_forward_hook(lambda *args: calls.append(1))
    assert step(provider, t, x, outputs) == (None, {})
    assert calls == [] and b.model.extras["align"].enabled is False
    t.schedule.step = 2
    loss, metrics = step(provider, t, x, outputs)
    assert loss is not None and calls == [1]
    assert {"align.loss", "align.weight", "align.anchor", "align.kl"} <= set(metrics)


def test_weight_follows_the_align_weight_schedule():
    b, provider = built("providers.align.bistate.view=evidence", "providers.align.bistate.weight=7.0")
    t = trainer(b.model, {"align_weight": {"start": 0.0, "end": 1.0, "by": "step", "mode": "linear"}})
    x = batch()
    evidence = torch.randn(3, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        outputs = b.model(x[0])
    module: BistateAligner = b.model.extras["align"]
    base = module(AlignState(outputs.hidden, outputs.logits),
                  module.evidence_view(outputs.hidden, evidence, b.model.lm_head)).loss.item()
    seen = []
    for position in range(5):
        t.schedule.step = position
        module.provide_evidence(evidence)
        loss, metrics = step(provider, t, x, outputs)
        seen.append(metrics["align.weight"])
        if position == 0:
            assert loss is None and set(metrics) == {"align.weight"}
        else:
            assert loss.item() == pytest.approx(metrics["align.weight"] * base, rel=1e-6)
            assert metrics["align.loss"] == pytest.approx(loss.item())
    assert seen == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])

    unscheduled = trainer(b.model)
    module.provide_evidence(evidence)
    loss, metrics = step(provider, unscheduled, x, outputs)
    assert metrics["align.weight"] == 7.0 and loss.item() == pytest.approx(7.0 * base, rel=1e-6)


def test_evidence_is_used_once(caplog):
    b, provider = built("providers.align.bistate.view=evidence")
    t, x = trainer(b.model), batch()
    outputs = b.model(x[0])
    b.model.extras["align"].provide_evidence(torch.randn(3, 8, 32))
    first, _ = step(provider, t, x, outputs)
    with caplog.at_level(logging.WARNING, logger="apt"):
        second, metrics = step(provider, t, x, outputs)
    assert first is not None and first.item() > 0
    assert second is None and "align.loss" not in metrics and "provide_evidence" in caplog.text


def test_padding_is_excluded_through_the_hook():
    b, provider = built("model.dropout=0.1", "providers.align.bistate.pad_token=0")
    t = trainer(b.model)
    x = torch.zeros(2, 8, dtype=torch.long)
    loss, metrics = step(provider, t, (x, x), b.model(x))
    assert loss.item() == 0.0 and metrics["align.anchor"] == 0.0
