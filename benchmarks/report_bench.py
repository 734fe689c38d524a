"""``apt report`` on a 2000-step run: time to write the page and its size.

The run is synthesised (training 2000 steps would measure the trainer, not the report): the
metrics a real run logs (step, eval every 100 steps, epoch records with a curriculum switch),
apt-plugin-monitor's per-layer gradient, weight and update norms and flags of a 12-block model
every 10 steps (``monitor/grad/<layer>``, ``monitor/flags``, ...), MoE
metrics with a list-valued expert load, and a checkpoint holding a profile and model tensor
shapes. The report is written with ``--peak-flops`` given, so the timing is the report's own
work; the matmul benchmark it runs otherwise is timed on its own.
"""

from __future__ import annotations

import json
import math
import os
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from common import arguments, write

STEPS = 2000
BLOCKS = 12
LOG_EVERY = 10
EVAL_EVERY = 100
EPOCH_STEPS = 500
MOE_FROM_EPOCH = 3


def synthesise(run_dir: Path, steps: int = STEPS) -> Path:
    """A run directory shaped like apt train's: metrics.jsonl and one checkpoint."""
    import torch

    rng = random.Random(0)
    layers = [f"blocks.{b}.{part}" for b in range(BLOCKS) for part in ("attn", "ffn")]
    lines = []
    for step in range(steps + 1):
        if step % EPOCH_STEPS == 0 and step < steps:
            epoch = step // EPOCH_STEPS + 1
            lines.append({"event": "epoch", "step": step, "epoch": epoch, "enabled.moe": epoch >= MOE_FROM_EPOCH})
        if step == 0:
            continue
        record: dict[str, Any] = {"event": "step", "step": step, "epoch": (step - 1) // EPOCH_STEPS + 1,
                                  "loss": 4.2 * step ** -0.15 + rng.gauss(0, 0.03),
                                  "lr": 3e-4 * min(1.0, step / 100) * (0.55 + 0.45 * math.cos(math.pi * step / steps)),
                                  "grad_norm": abs(rng.gauss(1.0, 0.2)), "tokens_per_s": rng.gauss(52_000, 2_000)}
        if step % LOG_EVERY == 0:
            flags = {}
            for i, layer in enumerate(layers):
                norm = 10 ** (-(i / len(layers)) * 3 * step / steps) * abs(rng.gauss(1.0, 0.1))
                record[f"monitor/grad/{layer}"] = norm
                record[f"monitor/weight/{layer}"] = 20.0 + i
                record[f"monitor/update_ratio/{layer}"] = 1e-3 * norm
                if norm < 2e-3:
                    flags[layer] = "vanishing"
            record["monitor/flags"] = flags
            record["monitor/vanishing"] = len(flags)
        if step > (MOE_FROM_EPOCH - 1) * EPOCH_STEPS:
            record["moe.balance_loss"] = abs(rng.gauss(0.01, 0.002))
            record["moe.expert_frac"] = [round(abs(rng.gauss(0.125, 0.02)), 5) for _ in range(8)]
        lines.append(record)
        if step % EVAL_EVERY == 0:
            val = 4.3 * step ** -0.15
            lines.append({"event": "eval", "step": step, "train_loss": val - 0.05, "val_loss": val,
                          "val_ppl": math.exp(val), "best": True})
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    d, vocab, block = 768, 50304, 1024

    def weight(*shape: int) -> torch.Tensor:
        """GPT-2 small's shapes over one-element storages: the report reads shapes, never values."""
        return torch.zeros(()).expand(*shape)

    model = {"tok_emb.weight": weight(vocab, d), "pos_emb.weight": weight(block, d)}
    for b in range(BLOCKS):
        model[f"blocks.{b}.attn.qkv.weight"] = weight(3 * d, d)
        model[f"blocks.{b}.attn.proj.weight"] = weight(d, d)
        model[f"blocks.{b}.ffn.up.weight"] = weight(4 * d, d)
        model[f"blocks.{b}.ffn.down.weight"] = weight(d, 4 * d)
    model["lm_head.weight"] = model["tok_emb.weight"]
    profile = {"name": "bench", "model": {"n_layer": BLOCKS, "n_head": 12, "d_model": d, "block_size": block},
               "train": {"precision": "bf16"}}
    (run_dir / "checkpoints").mkdir(exist_ok=True)
    torch.save({"step": steps, "run_id": "bench0000", "profile": profile, "model": model},
               run_dir / "checkpoints" / f"step-{steps:08d}.pt")
    return run_dir


def main() -> None:
    p = arguments(__doc__.splitlines()[0])
    p.set_defaults(rounds=3)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["APT_HOME"] = str(Path(tmp) / "apt_home")
        from apt_plugin_report.flops import measured_peak
        from apt_plugin_report.report import write_report

        run_dir = synthesise(Path(tmp) / "run")
        out = Path(tmp) / "report.html"
        seconds = []
        for _ in range(args.rounds):
            started = time.perf_counter()
            write_report([run_dir], out, peak_flops=989e12)
            seconds.append(time.perf_counter() - started)
        page = out.read_text()
        started = time.perf_counter()
        peak = measured_peak("cpu", precision="fp32", threads=2)
        peak_seconds = time.perf_counter() - started
        results = {
            "steps": STEPS, "per_layer_rows": 2 * BLOCKS, "metrics_bytes": (run_dir / "metrics.jsonl").stat().st_size,
            "write_seconds_median": statistics.median(seconds), "write_seconds": seconds,
            "html_bytes": len(page.encode()), "svg_elements": page.count("<svg"),
            "peak_benchmark_seconds": peak_seconds, "peak_benchmark_flops": peak.flops,
            "note": "report written with --peak-flops given; the default matmul benchmark adds peak_benchmark_seconds",
        }
    print(json.dumps(results, indent=2))
    write(args.out, "report_bench", results)


if __name__ == "__main__":
    main()
