"""MoE layer cost: topk_moe vs a dense FFN of the same active FLOPs vs a naive masked loop.

d_model 256, 8 experts of d_ff 1024, top-2, 2048 tokens, forward + backward, 2 threads.
topk_moe's time includes routing, the capacity limit and both auxiliary losses. The dense
FFN (d_ff 2048) does the same matmul work as two 1024-wide experts per token: the physical
reference. The naive variant loops over (k, expert) pairs with a boolean mask each.
End to end: moe_reasoning_small tokens/s with MoE on vs off (same steps, interleaved).
"""

from __future__ import annotations

import tempfile

import torch
from torch import nn

from common import arguments, interleave, paired_ratio, timed, write

from apt.builtin.layers import DenseFFN
from apt.profile import load_profile
from apt.providers import ModelDims
from apt.trainer import Trainer
from apt_plugin_moe.layer import MoELayer
from apt_plugin_moe.provider import TopKMoEConfig

D, D_FF, E, K, TOKENS = 256, 1024, 8, 2, 2048


class NaiveMoE(nn.Module):
    """Routing as often first written: a boolean mask and a gather per (k, expert) pair."""

    def __init__(self, moe: MoELayer) -> None:
        super().__init__()
        self.moe = moe

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, D)
        probs = (self.moe.router(flat) / self.moe.route_temp).softmax(-1)
        top_p, top_e = probs.topk(K, dim=-1)
        gates = top_p / top_p.sum(-1, keepdim=True)
        out = torch.zeros_like(flat)
        for k in range(K):
            for e in range(E):
                mask = top_e[:, k] == e
                if mask.any():
                    out[mask] += gates[mask, k, None] * self.moe.experts[e](flat[mask].unsqueeze(0)).squeeze(0)
        return out.view_as(x)


def layer_step(module: nn.Module, x: torch.Tensor, aux: bool = False):
    def run() -> None:
        out = module(x)
        loss = out.pow(2).mean()
        if aux:
            balance, z = module.aux
            loss = loss + 0.01 * balance + 0.001 * z
        loss.backward()
        module.zero_grad(set_to_none=True)

    run()
    return lambda: timed(run, repeat=3)


def trainer_rate(moe_on: bool, steps: int):
    sets = ["model.align=null", "train.threads=2", "logging.jsonl=false", "logging.progress=false",
            f"checkpoint.dir={tempfile.mkdtemp()}"]
    if not moe_on:
        sets.append("schedules.enable_moe_at_epoch=1000")
    trainer = Trainer(load_profile("moe_reasoning_small", sets), echo=lambda s: None)
    for switch in trainer.schedule.switches:
        for module in trainer.built.switches.get(switch, ()):
            module.enabled = trainer.schedule.enabled(switch)
    tokens = trainer.profile.train.batch_size * trainer.profile.model.block_size
    trainer.train_step()
    return lambda: tokens * steps / timed(lambda: [trainer.train_step() for _ in range(steps)])


def main() -> None:
    args = arguments(__doc__).parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    dims = ModelDims(n_layer=1, n_head=4, d_model=D, block_size=TOKENS, vocab_size=2)
    moe = MoELayer(D, lambda: DenseFFN(dims, D_FF), TopKMoEConfig(experts=E, top_k=K, capacity_factor=1.25))
    dense = DenseFFN(dims, K * D_FF)
    x = torch.randn(1, TOKENS, D, requires_grad=True)
    layer = interleave({"dense_ffn_2048": layer_step(dense, x), "topk_moe": layer_step(moe, x, aux=True),
                        "naive_mask_loop": layer_step(NaiveMoE(moe), x)}, args.rounds)
    e2e = interleave({"moe_on": trainer_rate(True, 5), "moe_off": trainer_rate(False, 5)}, args.rounds)
    topk_ratio = paired_ratio(layer, "topk_moe", "dense_ffn_2048")
    write(args.out, "moe_layer", {
        "layer": {"d_model": D, "d_ff_per_expert": D_FF, "experts": E, "top_k": K, "tokens": TOKENS,
                  "median_s": {k: round(sorted(v)[len(v) // 2], 5) for k, v in layer.items()},
                  "time_vs_dense": {"topk_moe": round(topk_ratio, 4),
                                    "naive_mask_loop": round(paired_ratio(layer, "naive_mask_loop", "dense_ffn_2048"), 4)}},
        "end_to_end_moe_reasoning_small": {
            "median_tokens_per_s": {k: round(sorted(v)[len(v) // 2]) for k, v in e2e.items()},
            "moe_on_vs_off_throughput": round(paired_ratio(e2e, "moe_on", "moe_off"), 4)},
        "targets": {"topk_moe <= 1.12x dense ffn": topk_ratio <= 1.12}})


if __name__ == "__main__":
    main()
