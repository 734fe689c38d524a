import logging
import subprocess
import sys

import pytest
import torch

from apt.builtin.layers import CausalSelfAttention
from apt.model import ModelBuilder
from apt.profile import load_profile
from apt.providers import ModelDims
from apt_plugin_flash.attention import FlashAttention
from apt_plugin_flash.kernels import load_flash_attn, warn_once
from apt_plugin_flash.provider import FlashV2Provider

DIMS = ModelDims(n_layer=1, n_head=4, d_model=64, block_size=32, vocab_size=10)


@pytest.fixture
def fresh_warnings():
    warn_once.cache_clear()
    yield
    warn_once.cache_clear()


def pair(dims: ModelDims = DIMS) -> tuple[FlashAttention, CausalSelfAttention]:
    torch.manual_seed(0)
    flash = FlashAttention(dims)
    sdpa = CausalSelfAttention(dims)
    sdpa.load_state_dict(flash.state_dict())
    return flash, sdpa


def test_importing_the_plugin_imports_neither_torch_nor_flash_attn():
    code = ("import sys, apt_plugin_flash.provider; "
            "sys.exit(('torch' in sys.modules) + 2 * ('flash_attn' in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_cpu_forwards_never_look_for_flash_attn():
    load_flash_attn.cache_clear()
    flash, _ = pair()
    flash(torch.randn(2, 8, 64))
    assert load_flash_attn.cache_info().misses == 0


@pytest.mark.parametrize("bias, dropout, training", [(False, 0.0, True), (True, 0.0, False), (False, 0.2, False)])
def test_outputs_and_gradients_equal_the_sdpa_layer(bias, dropout, training):
    dims = ModelDims(n_layer=1, n_head=4, d_model=64, block_size=32, vocab_size=10, dropout=dropout, bias=bias)
    flash, sdpa = pair(dims)
    flash.train(training)
    sdpa.train(training)
    x = torch.randn(3, 32, 64, requires_grad=True)
    y_flash = flash(x)
    (g_flash,) = torch.autograd.grad(y_flash.square().sum(), x)
    y_sdpa = sdpa(x)
    (g_sdpa,) = torch.autograd.grad(y_sdpa.square().sum(), x)
    assert (y_flash - y_sdpa).abs().max().item() <= 1e-6
    assert (g_flash - g_sdpa).abs().max().item() <= 1e-5


def test_causal():
    flash, _ = pair()
    x = torch.randn(2, 32, 64)
    later = x.clone()
    later[:, 20:] += 5.0
    assert torch.allclose(flash(x)[:, :20], flash(later)[:, :20], atol=1e-6)


def test_cpu_fallback_warns_exactly_once_across_many_forwards(caplog, fresh_warnings):
    profile = load_profile("tiny_debug", ["model.n_layer=3", "model.d_model=32", "model.attention=flash_v2"])
    model = ModelBuilder(profile, 10).build().model
    x = torch.randint(0, 10, (2, 16))
    with caplog.at_level(logging.WARNING, logger="apt"):
        for _ in range(5):
            model(x)
        model.eval()
        model(x)
    messages = [r.getMessage() for r in caplog.records if "flash_v2" in r.getMessage()]
    assert len(messages) == 1
    assert "CUDA GPU" in messages[0] and "pip install apt-plugin-flash[cuda]" in messages[0]


def test_state_dict_moves_between_sdpa_and_flash_v2():
    def build(attention: str):
        profile = load_profile("tiny_debug", ["model.n_layer=2", "model.d_model=32", f"model.attention={attention}"])
        return ModelBuilder(profile, 10).build().model.eval()

    torch.manual_seed(0)
    sdpa = build("sdpa")
    torch.manual_seed(1)
    flash = build("flash_v2")
    assert isinstance(flash.blocks[0].attn, FlashAttention)
    x = torch.randint(0, 10, (2, 16))
    assert flash.load_state_dict(sdpa.state_dict(), strict=True)
    assert torch.allclose(flash(x).logits, sdpa(x).logits, atol=1e-6)
    torch.manual_seed(2)
    back = build("sdpa")
    assert back.load_state_dict(flash.state_dict(), strict=True)
    assert torch.allclose(back(x).logits, flash(x).logits, atol=1e-6)


def test_flash_attn_is_looked_up_lazily_and_cached():
    load_flash_attn.cache_clear()
    try:
        found = load_flash_attn()
        assert load_flash_attn.cache_info().misses == 1
        assert load_flash_attn() is found and load_flash_attn.cache_info().hits == 1
        assert (found is None) == ("flash_attn" not in sys.modules)
    finally:
        load_flash_attn.cache_clear()


def test_self_test():
    assert FlashV2Provider(FlashV2Provider.Config()).self_test().startswith("flash_v2: matches sdpa")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_flash_path_matches_sdpa_in_bf16_on_cuda():
    flash, sdpa = pair()
    x = torch.randn(4, 32, 64, device="cuda")
    reference = sdpa.cuda().eval()(x)
    flash = flash.cuda().bfloat16().eval()
    y = flash(x.bfloat16()).float()
    assert (y - sdpa.bfloat16()(x.bfloat16()).float()).abs().max().item() < 2e-2
    assert (y - reference).abs().max().item() < 3e-2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cached_decoding_on_cuda_matches_the_full_forward_in_bf16():
    from apt.kvcache import KVCache

    flash, _ = pair()
    flash = flash.cuda().bfloat16().eval()
    x = torch.randn(2, 32, 64, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        full = flash(x).float()
        cache = KVCache(1, 2, 32)
        cache.prepare(None, [0, 0], 8, x.device)
        steps = [flash.forward_cached(x[:, :8], cache.layers[0])]
        for t in range(8, 32):
            cache.prepare(None, [t, t], 1, x.device)
            steps.append(flash.forward_cached(x[:, t:t + 1], cache.layers[0]))
    assert (torch.cat(steps, dim=1).float() - full).abs().max().item() < 3e-2
