"""Install-time check of the bistate loss (run by the sandbox through ``Provider.self_test``)."""

from __future__ import annotations

import torch

from apt_plugin_align.aligner import AlignState, BistateAligner
from apt_plugin_align.provider import BistateConfig


def self_test(config: BistateConfig) -> str:
    """The three properties everything else rests on: zero for equal states, positive for different
    ones, and gradients that reach the align state only."""
    generator = torch.Generator().manual_seed(0)
    d_model, vocab = max(16, config.r), 11
    aligner = BistateAligner(d_model, config)
    hidden = torch.randn(2, 5, d_model, generator=generator, requires_grad=True)
    logits = torch.randn(2, 5, vocab, generator=generator, requires_grad=True)
    same = aligner(AlignState(hidden, logits), AlignState(hidden, logits))
    if same.loss.item() != 0.0:
        raise AssertionError(f"loss of two equal states is {same.loss.item()!r}, not 0")
    other = AlignState(hidden + torch.randn(2, 5, d_model, generator=generator),
                       logits + torch.randn(2, 5, vocab, generator=generator))
    stable = AlignState(hidden.detach().clone().requires_grad_(), logits.detach().clone().requires_grad_())
    differ = aligner(stable, other)
    if not differ.loss.item() > 0.0:
        raise AssertionError(f"loss of two different states is {differ.loss.item()!r}, not positive")
    differ.loss.backward()
    if stable.hidden.grad is not None or stable.logits.grad is not None:
        raise AssertionError("gradient reached the stable state")
    if hidden.grad is None or logits.grad is None:
        raise AssertionError("no gradient reached the align state")
    return "bistate: zero on equal states, positive otherwise, gradients reach the align state only"
