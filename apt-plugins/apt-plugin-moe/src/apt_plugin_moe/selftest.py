"""A slow, obviously-correct router used to check the grouped one (tests and install self-test)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import nn

from apt_plugin_moe.provider import TopKMoEConfig


def reference_route(layer: Any, flat: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Per-assignment loop in priority order (all first choices, then second choices, ...).

    Returns the routed output and the number of dropped assignments.
    """
    N, E, k = flat.shape[0], layer.num_experts, layer.top_k
    probs = (flat.float() @ layer.router.weight.float().T / layer.route_temp).softmax(-1)
    top_p, top_e = probs.topk(k, dim=-1)
    gates = top_p / top_p.sum(-1, keepdim=True)
    capacity = math.ceil(layer.capacity_factor * N * k / E)
    load = [0] * E
    out = torch.zeros_like(flat)
    dropped = 0
    for j in range(k):
        for n in range(N):
            e = int(top_e[n, j])
            if load[e] >= capacity:
                dropped += 1
                continue
            load[e] += 1
            out[n] += gates[n, j] * layer.experts[e](flat[n].view(1, 1, -1)).view(-1)
    return out, dropped


def routing_matches_reference(config: TopKMoEConfig) -> str:
    from apt_plugin_moe.layer import MoELayer

    torch.manual_seed(0)
    d = 16
    experts = min(config.experts, 4)
    small = dataclasses.replace(config, experts=experts, top_k=min(config.top_k, experts), capacity_factor=1.0,
                                shared_expert=False)
    layer = MoELayer(d, lambda: nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d)), small)
    flat = torch.randn(24, d)
    expected, _ = reference_route(layer, flat)
    if not torch.allclose(layer.route(flat), expected, atol=1e-5):
        raise AssertionError("grouped dispatch disagrees with the per-token reference router")
    return "topk_moe: routing matches the reference"
