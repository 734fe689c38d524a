"""Install-time check (run by the sandbox through ``Provider.self_test``)."""

from __future__ import annotations

import torch

from apt import CausalSelfAttention, ModelDims
from apt_plugin_flash.attention import FlashAttention


def self_test() -> str:
    """Agreement with ``attention.sdpa`` and causality on CPU, and on the flash path when a GPU is here."""
    generator = torch.Generator().manual_seed(0)
    dims = ModelDims(n_layer=1, n_head=2, d_model=32, block_size=16, vocab_size=16)
    flash, sdpa = FlashAttention(dims).eval(), CausalSelfAttention(dims).eval()
    sdpa.load_state_dict(flash.state_dict())
    x = torch.randn(2, 16, dims.d_model, generator=generator)
    y = flash(x)
    if not torch.allclose(y, sdpa(x), atol=1e-6):
        raise AssertionError("flash_v2 disagrees with sdpa on CPU")
    later = x.clone()
    later[:, 8:] += 1.0
    if not torch.allclose(flash(later)[:, :8], y[:, :8], atol=1e-6):
        raise AssertionError("output depends on future tokens: the causal mask is broken")
    checked = "cpu"
    if torch.cuda.is_available():
        flash, sdpa = flash.cuda().bfloat16(), sdpa.cuda().bfloat16()
        x = x.cuda().bfloat16()
        error = (flash(x) - sdpa(x)).abs().max().item()
        if error > 2e-2:
            raise AssertionError(f"flash_v2 differs from sdpa by {error:.3g} in bf16 on CUDA")
        checked += " and cuda"
    return f"flash_v2: matches sdpa and is causal on {checked}"
