import math

import pytest
import torch
from torch import nn

from apt.config import ConfigError
from apt.registry import default_registry
from apt_plugin_moe.layer import MoELayer
from apt_plugin_moe.provider import TopKMoEConfig, TopKMoEProvider
from apt_plugin_moe.selftest import reference_route

D = 8


def ffn() -> nn.Module:
    return nn.Sequential(nn.Linear(D, 2 * D), nn.GELU(), nn.Linear(2 * D, D))


def layer(experts=4, top_k=2, capacity=1.25, temp=1.0, shared=False, seed=0) -> MoELayer:
    torch.manual_seed(seed)
    return MoELayer(D, ffn, TopKMoEConfig(experts=experts, top_k=top_k, capacity_factor=capacity, route_temp=temp,
                                          shared_expert=shared))


@pytest.mark.parametrize("experts, top_k, capacity, temp", [(4, 2, 1.25, 1.0), (4, 1, 0.5, 1.0), (8, 2, 0.75, 0.7),
                                                            (3, 3, 2.0, 1.5), (4, 2, 0.3, 1.0)])
def test_grouped_dispatch_matches_per_token_reference(experts, top_k, capacity, temp):
    moe = layer(experts, top_k, capacity, temp)
    flat = torch.randn(40, D)
    expected, dropped = reference_route(moe, flat)
    assert torch.allclose(moe.route(flat), expected, atol=1e-5)
    assert moe.stats.dropped_fraction == pytest.approx(dropped / (40 * top_k))


def test_capacity_drops_are_counted_and_dropped_tokens_pass_through():
    moe = layer(experts=2, top_k=1)
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.weight[0].fill_(1.0)
    flat = torch.rand(10, D) + 0.1
    moe.capacity_factor = 0.4
    out = moe.route(flat)
    capacity = math.ceil(0.4 * 10 * 1 / 2)
    assert capacity == 2
    assert moe.stats.dropped_fraction == pytest.approx(8 / 10)
    assert moe.stats.expert_fraction.tolist() == [1.0, 0.0]
    assert torch.count_nonzero(out.abs().sum(-1)).item() == 2
    assert torch.equal(out[2:], torch.zeros_like(out[2:]))


def test_aux_losses_on_hand_computed_cases():
    moe = layer(experts=4, top_k=1)
    with torch.no_grad():
        moe.router.weight.zero_()
    flat = torch.randn(16, D)
    moe.route(flat)
    balance, z = moe.aux
    # uniform probabilities: P_i = 1/4 and every tie goes to one expert, so f = one-hot
    assert balance.item() == pytest.approx(4 * (1.0 * 0.25))
    assert z.item() == pytest.approx(math.log(4) ** 2)
    assert sorted(moe.stats.expert_fraction.tolist()) == [0.0, 0.0, 0.0, 1.0]


def test_gradients_reach_router_and_experts():
    moe = layer()
    x = torch.randn(2, 10, D, requires_grad=True)
    out = moe(x)
    (out.pow(2).sum() + sum(moe.aux)).backward()
    assert moe.router.weight.grad.abs().sum() > 0
    used = [i for i, f in enumerate(moe.stats.expert_fraction.tolist()) if f > 0]
    for i in used:
        assert moe.experts[i][0].weight.grad.abs().sum() > 0
    assert x.grad.abs().sum() > 0


def test_disabled_layer_is_the_dense_ffn_and_upcycling_copies_it():
    moe = layer(shared=True)
    x = torch.randn(2, 5, D)
    moe.enabled = False
    assert torch.allclose(moe(x), moe.experts[0](x) + moe.shared(x))
    assert moe.aux is None
    moe.upcycle()
    for expert in moe.experts[1:]:
        assert all(torch.equal(a, b) for a, b in zip(expert.parameters(), moe.experts[0].parameters(), strict=True))


def test_bf16_autocast_routes():
    moe = layer()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = moe(torch.randn(2, 6, D))
    assert out.shape == (2, 6, D) and torch.isfinite(out.float()).all()


def test_config_validation_and_self_test():
    with pytest.raises(ConfigError, match="providers.router.topk_moe.top_k: must be <= experts"):
        default_registry().make("router", "topk_moe", {"experts": 2, "top_k": 3})
    with pytest.raises(ConfigError, match="capacity_factor: expected a value > 0"):
        default_registry().make("router", "topk_moe", {"capacity_factor": 0})
    assert TopKMoEProvider(TopKMoEConfig()).self_test() == "topk_moe: routing matches the reference"
