"""The mixture-of-experts layer: top-k routing, capacity, grouped dispatch, auxiliary losses.

Dispatch is grouped: the k assignments of every token are sorted by expert (first choices ahead
of second choices, tokens in order), each expert runs once on its contiguous slice, and the
weighted outputs are scatter-added back. In training, an expert over capacity drops its
lowest-priority assignments; a token that loses all of them passes through the block's residual
unchanged. In eval no assignment is dropped, which keeps the layer causal for generation.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from apt_plugin_moe.provider import TopKMoEConfig


@dataclass
class RoutingStats:
    """Detached statistics of the last routed batch (for metrics)."""

    expert_fraction: torch.Tensor
    dropped_fraction: float
    balance_loss: float
    z_loss: float


class MoELayer(nn.Module):
    def __init__(self, d_model: int, make_ffn: Callable[[], nn.Module], config: TopKMoEConfig) -> None:
        super().__init__()
        self.num_experts = config.experts
        self.top_k = config.top_k
        #: Follow the schedule (``moe_capacity``, ``route_temp``): the provider's step hook sets them.
        self.capacity_factor = config.capacity_factor
        self.route_temp = config.route_temp
        self.router = nn.Linear(d_model, config.experts, bias=False)
        self.experts = nn.ModuleList(make_ffn() for _ in range(config.experts))
        self.shared = make_ffn() if config.shared_expert else None
        #: Set by the curriculum: while False the layer is the dense FFN of expert 0.
        self.enabled = True
        self.aux: tuple[torch.Tensor, torch.Tensor] | None = None
        self.stats: RoutingStats | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shared = self.shared(x) if self.shared is not None else 0.0
        if not self.enabled:
            self.aux, self.stats = None, None
            return self.experts[0](x) + shared
        B, T, C = x.shape
        routed = self.route(x.reshape(B * T, C))
        return routed.view(B, T, C) + shared

    def route(self, flat: torch.Tensor) -> torch.Tensor:
        N, E, k = flat.shape[0], self.num_experts, self.top_k
        logits = F.linear(flat.float(), self.router.weight.float()) / self.route_temp
        probs = logits.softmax(dim=-1)
        top_p, top_e = probs.topk(k, dim=-1)
        gates = top_p / top_p.sum(dim=-1, keepdim=True)

        expert_of = top_e.t().reshape(-1)
        token_of = torch.arange(N, device=flat.device).repeat(k)
        gate_of = gates.t().reshape(-1)
        order = torch.argsort(expert_of, stable=True)
        counts = torch.bincount(expert_of, minlength=E)
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.arange(N * k, device=flat.device) - starts[expert_of[order]]
        # Capacity is a training-time budget; in eval nothing is dropped, so a token's output never
        # depends on later tokens (or other rows) competing for its expert.
        capacity = math.ceil(self.capacity_factor * N * k / E) if self.training else N * k
        kept = order[rank < capacity]
        kept_counts = counts.clamp(max=capacity)

        tokens = token_of[kept]
        weights = gate_of[kept].unsqueeze(-1)
        sizes = kept_counts.tolist()
        out = torch.zeros_like(flat)
        for e, (chunk, idx, w) in enumerate(zip(flat.index_select(0, tokens).split(sizes), tokens.split(sizes),
                                                weights.split(sizes), strict=True)):
            if chunk.shape[0]:
                y = self.experts[e](chunk.unsqueeze(0)).squeeze(0)
                out = out.index_add(0, idx, (y * w).to(flat.dtype))

        fraction = counts.float() / (N * k)
        balance = E * torch.sum(fraction * probs.mean(dim=0))
        z = torch.logsumexp(logits, dim=-1).pow(2).mean()
        self.aux = (balance, z)
        self.stats = RoutingStats(fraction.detach(), 1.0 - kept.numel() / (N * k), balance.item(), z.item())
        return out

    @torch.no_grad()
    def upcycle(self) -> None:
        """Make every expert a copy of expert 0 (the dense FFN trained while MoE was off)."""
        source = self.experts[0].state_dict()
        for expert in self.experts[1:]:
            expert.load_state_dict(source)
