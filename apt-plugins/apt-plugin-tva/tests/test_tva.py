import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from apt.config import ConfigError
from apt.model import ModelBuilder
from apt.profile import load_profile
from apt.providers import ModelDims
from apt.registry import default_registry
from apt_plugin_tva.attention import FoldedTriVein, TriVeinAttention
from apt_plugin_tva.provider import TVAConfig, TVAProvider

DIMS = ModelDims(n_layer=1, n_head=4, d_model=64, block_size=16, vocab_size=10)


def reference(layer: TriVeinAttention, x: torch.Tensor) -> torch.Tensor:
    """TVA written out term by term, with an explicit T x T softmax."""
    B, T, C = x.shape
    H, D = layer.n_head, C // layer.n_head
    q, k, v = (t.view(B, T, H, D).transpose(1, 2) for t in layer.qkv(x).split(C, dim=2))
    V, U, N, M = layer.vein, layer.lift, layer.normal, layer.normal_lift
    scores = (q @ V.T) @ (k @ V.T).transpose(-1, -2) / math.sqrt(layer.r)
    scores = scores.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float("-inf"))
    A = F.softmax(scores, dim=-1)
    off = v - (v @ V.T) @ U.T
    gate = (off.norm(dim=-1) / v.norm(dim=-1) > layer.tau).float().unsqueeze(-1)
    out = (A @ (v @ V.T)) @ U.T + (A @ ((off @ N.T) * gate)) @ M.T
    return layer.proj(out.transpose(1, 2).reshape(B, T, C))


@pytest.mark.parametrize("r, s, tau, kernel_dim", [(4, 1, 0.18, None), (3, 2, 0.5, None), (4, 1, 0.18, 16),
                                                   (2, 1, 10.0, None)])
def test_fused_layer_matches_reference(r, s, tau, kernel_dim):
    torch.manual_seed(0)
    layer = TriVeinAttention(DIMS, TVAConfig(r, s, tau, kernel_dim)).eval()
    x = torch.randn(2, 16, 64)
    assert torch.allclose(layer(x), reference(layer, x), atol=1e-5)


def test_gate_follows_relative_off_plane_error():
    torch.manual_seed(0)
    layer = TriVeinAttention(DIMS, TVAConfig(4, 1, 0.18)).eval()
    x = torch.randn(2, 16, 64)
    ratio = layer.off_plane_ratio(x)
    assert ratio.shape == (2, 4, 16) and bool(((ratio >= 0) & (ratio <= 1 + 1e-5)).all())
    never = TriVeinAttention(DIMS, TVAConfig(4, 1, tau=2.0)).eval()
    never.load_state_dict(layer.state_dict())
    with torch.no_grad():
        never.normal_lift.mul_(100.0)
    plain = TriVeinAttention(DIMS, TVAConfig(4, 1, tau=2.0)).eval()
    plain.load_state_dict(layer.state_dict())
    assert torch.allclose(never(x), plain(x), atol=1e-6), "tau above every ratio must switch compensation off"


def test_causal_and_gradients_reach_every_parameter():
    torch.manual_seed(0)
    layer = TriVeinAttention(DIMS, TVAConfig(4, 2, 0.05))
    x = torch.randn(2, 16, 64, requires_grad=True)
    y = layer(x)
    x2 = x.detach().clone()
    x2[:, 10:] += 3.0
    assert torch.allclose(layer(x2)[:, :10], y[:, :10], atol=1e-5)
    y.pow(2).sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_veins_start_orthonormal():
    layer = TriVeinAttention(DIMS, TVAConfig(4, 1, 0.18))
    assert torch.allclose(layer.vein @ layer.lift, torch.eye(4), atol=1e-5)
    assert torch.allclose(layer.vein @ layer.normal.T, torch.zeros(4, 1), atol=1e-5)


@pytest.mark.parametrize("options, message", [
    ({"r": 0}, "providers.attention.tva.r: expected a value >= 1"),
    ({"s": 0}, "providers.attention.tva.s: expected a value >= 1"),
    ({"tau": 0}, "providers.attention.tva.tau: expected a value > 0"),
])
def test_config_bounds(options, message):
    with pytest.raises(ConfigError, match=message):
        default_registry().make("attention", "tva", options)


def test_rank_must_be_below_head_dim():
    with pytest.raises(ConfigError, match=r"1 <= r < d_head = d_model/n_head = 16, got 16"):
        TVAProvider(TVAConfig(r=16)).check(DIMS)


def test_default_attention_and_self_test():
    profile = load_profile("tiny_debug", ["model.attention=null"])
    built = ModelBuilder(profile, 10).build()
    assert built.providers["attention"]["name"] == "tva"
    assert isinstance(built.model.blocks[0].attn, TriVeinAttention)
    assert TVAProvider(TVAConfig()).self_test() == "tva: shape and causality ok"


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("r, s, kernel_dim", [(4, 1, None), (3, 2, None), (2, 3, 16), (8, 4, None)])
def test_inference_form_matches_forward(bias, r, s, kernel_dim):
    torch.manual_seed(0)
    dims = dataclasses.replace(DIMS, bias=bias, dropout=0.1)
    layer = TriVeinAttention(dims, TVAConfig(r, s, 0.5, kernel_dim))
    with torch.no_grad():  # away from the orthonormal start, as after training
        for p in layer.parameters():
            p.add_(0.2 * torch.randn_like(p))
    x = torch.randn(3, 16, 64)
    layer.eval()
    layer.tau = layer.off_plane_ratio(x).median().item()  # compensation on for about half of the tokens
    folded = layer.inference_form()
    assert isinstance(folded, FoldedTriVein) and not folded.training
    assert [type(m) for m in folded.children() if isinstance(m, nn.Linear)] == [nn.Linear] * 3
    assert not [n for n, p in folded.named_parameters() if n.split(".")[0] not in ("in_proj", "value", "out_proj")]
    assert {n for n, _ in folded.named_buffers()} == {"vein", "lift"}, "the gate's tensors are saved with the model"
    assert folded.in_proj.out_features == 4 * (3 * r + s) and folded.out_proj.in_features == 4 * (r + s)
    assert (folded.in_proj.bias is not None) is bias and (folded.out_proj.bias is not None) is bias
    ratio = folded.off_plane_ratio(x)
    assert torch.equal(ratio, layer.off_plane_ratio(x)) and 0 < (ratio > layer.tau).float().mean() < 1
    with torch.no_grad():
        assert torch.allclose(folded(x), layer(x), atol=1e-5)
        assert torch.allclose(folded(x), reference(layer, x), atol=1e-5)
    state = folded.state_dict()
    with torch.no_grad():
        layer.vein.zero_()  # the inference form is a snapshot: later changes to the layer do not reach it
    again = TriVeinAttention(dims, TVAConfig(r, s, layer.tau, kernel_dim)).inference_form()
    again.load_state_dict(state)
    with torch.no_grad():
        assert torch.equal(again(x), folded(x)), "a saved inference form reloads into a fresh one"


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("r, s, kernel_dim", [(4, 1, None), (3, 2, 16)])
def test_kv_cache_matches_forward_with_the_gate_on_for_some_tokens(bias, r, s, kernel_dim):
    from apt import SupportsKVCache
    from apt.testing import check_kv_cache

    torch.manual_seed(0)
    dims = dataclasses.replace(DIMS, bias=bias)
    layer = TriVeinAttention(dims, TVAConfig(r, s, 0.5, kernel_dim))
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.2 * torch.randn_like(p))
    layer.eval()
    layer.tau = layer.off_plane_ratio(torch.randn(2, 16, 64)).median().item()
    for module in (layer, layer.inference_form()):
        assert isinstance(module, SupportsKVCache)
        check_kv_cache(module, dims, type(module).__name__)


def test_decoding_refolds_after_the_weights_change():
    from apt.testing import check_kv_cache

    torch.manual_seed(0)
    layer = TriVeinAttention(DIMS, TVAConfig()).eval()
    check_kv_cache(layer, DIMS)
    with torch.no_grad():
        layer.qkv.weight.mul_(1.5)
        layer.vein.add_(0.1)
    check_kv_cache(layer, DIMS, "after an in-place update")
    layer.load_state_dict(TriVeinAttention(DIMS, TVAConfig()).state_dict())
    check_kv_cache(layer, DIMS, "after load_state_dict")
