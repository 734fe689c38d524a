"""The ``router.topk_moe`` provider and its training hooks (torch-free at import time)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from apt import ConfigError, ModelDims, RouterProvider, hookimpl, option

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class TopKMoEConfig:
    experts: int = option(8, ge=1, doc="experts per layer, each a copy of the configured FFN")
    top_k: int = option(2, ge=1, doc="experts per token")
    capacity_factor: float = option(1.25, gt=0, doc="capacity = ceil(factor * tokens * top_k / experts); "
                                                    "schedule key moe_capacity")
    route_temp: float = option(1.0, gt=0, doc="router softmax temperature; schedule key route_temp")
    balance_loss: float = option(0.01, ge=0, doc="weight of the Switch load-balancing loss E * sum(f_i P_i)")
    z_loss: float = option(0.001, ge=0, doc="weight of the router z-loss mean(logsumexp(logits)^2)")
    shared_expert: bool = option(False, doc="add an always-on expert beside the routed ones")
    upcycle: bool = option(True, doc="when the curriculum switches MoE on, start every expert from the "
                                     "dense FFN trained so far")

    def __post_init__(self) -> None:
        if self.top_k > self.experts:
            raise ConfigError("top_k", f"must be <= experts ({self.experts}), got {self.top_k}")


class TopKMoEProvider(RouterProvider):
    """Top-k softmax router over E experts with capacity, balance and z losses, grouped dispatch."""

    name = "topk_moe"
    Config = TopKMoEConfig
    switch = "moe"

    def __init__(self, config: TopKMoEConfig) -> None:
        super().__init__(config)
        self.layers: list[Any] = []
        self.upcycled = False
        self._stats: list[Any] = []

    def build(self, dims: ModelDims, layer: int, make_ffn: Callable[[], nn.Module]) -> nn.Module:
        from apt_plugin_moe.layer import MoELayer

        module = MoELayer(dims.d_model, make_ffn, self.config)
        self.layers.append(module)
        return module

    @hookimpl
    def apt_epoch_start(self, trainer: Any, epoch: int) -> None:
        scheduled = self.switch in trainer.schedule.switches
        if scheduled and self.config.upcycle and not self.upcycled and trainer.schedule.enabled(self.switch):
            for layer in self.layers:
                layer.upcycle()
            self.upcycled = True
            trainer.say(f"moe: switched on at epoch {epoch}; {self.config.experts} experts upcycled from the dense FFN")

    @hookimpl
    def apt_step_start(self, trainer: Any) -> None:
        capacity = trainer.schedule.value("moe_capacity", self.config.capacity_factor)
        temp = trainer.schedule.value("route_temp", self.config.route_temp)
        for layer in self.layers:
            layer.capacity_factor, layer.route_temp = capacity, temp

    @hookimpl(tryfirst=True)
    def apt_extra_losses(self) -> dict[str, Any]:
        """Runs first so a later hook's extra forward pass (bistate's second view) cannot replace
        the routing of the main pass before it is read."""
        self._stats = [layer.stats for layer in self.layers if layer.enabled and layer.stats is not None]
        routed = [layer.aux for layer in self.layers if layer.enabled and layer.aux is not None]
        if not routed:
            return {}
        n = len(routed)
        return {"balance": self.config.balance_loss * sum(b for b, _ in routed) / n,
                "z": self.config.z_loss * sum(z for _, z in routed) / n}

    @hookimpl
    def apt_step_end(self, metrics: dict[str, Any]) -> None:
        stats, self._stats = self._stats, []
        metrics["moe.enabled"] = bool(stats)
        if not stats:
            return
        n = len(stats)
        metrics["moe.capacity"] = self.layers[0].capacity_factor
        metrics["moe.route_temp"] = self.layers[0].route_temp
        metrics["moe.dropped_frac"] = sum(s.dropped_fraction for s in stats) / n
        metrics["moe.balance_loss"] = sum(s.balance_loss for s in stats) / n
        metrics["moe.z_loss"] = sum(s.z_loss for s in stats) / n
        metrics["moe.expert_frac"] = [round(v, 5) for v in (sum(s.expert_fraction for s in stats) / n).tolist()]

    @hookimpl
    def apt_state_dict(self) -> dict[str, Any]:
        return {"upcycled": self.upcycled}

    @hookimpl
    def apt_load_state_dict(self, state: dict[str, Any]) -> None:
        self.upcycled = bool(state.get("upcycled", False))

    def self_test(self) -> str:
        from apt_plugin_moe.selftest import routing_matches_reference

        return routing_matches_reference(self.config)
