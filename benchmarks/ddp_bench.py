"""DDP on CPU, for honesty: 2 ranks (gloo, 1 thread each) vs 1 rank (2 threads) at one global batch.

``apt train -p shakespeare_char`` through the CLI, 12 sequences per step either way (2 x 6 or
1 x 12). Rounds alternate the two layouts (A B A B ...); each reports the median tokens/s over
its steps after the first 20 and its final validation loss. Both layouts see the same data
(``apt.data.Batches`` slices one global batch), so the loss difference measures only float
reduction order. Gloo on two shared cores is not expected to win.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import arguments, write

BIN = Path(sys.executable).parent
STEPS = 200


def train(root: Path, nproc: int, tag: str) -> dict[str, float]:
    run_dir = root / tag
    batch, threads = (12 // nproc, 2 // nproc)
    env = {**os.environ, "APT_HOME": str(root / "home")}
    cmd = [str(BIN / "apt"), "train", "-p", "shakespeare_char", "--nproc", str(nproc), "--overwrite",
           "--set", f"train.batch_size={batch}", "--set", f"train.threads={threads}",
           "--set", f"train.max_iters={STEPS}", "--set", f"train.eval_interval={STEPS}", "--set", "train.eval_iters=20",
           "--set", "model.attention=sdpa", "--set", "logging.progress=false", "--set", f"checkpoint.dir={run_dir}"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    speeds = [r["tokens_per_s"] for r in rows if r["event"] == "step" and r["step"] > 20]
    val = [r["val_loss"] for r in rows if r["event"] == "eval"][-1]
    return {"tokens_per_s": statistics.median(speeds), "val_loss": val}


def main() -> None:
    p = arguments(__doc__.splitlines()[0])
    p.set_defaults(rounds=3)
    args = p.parse_args()
    samples: dict[str, list[dict[str, float]]] = {"ddp2": [], "single": []}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for r in range(args.rounds):
            order = ("ddp2", "single") if r % 2 == 0 else ("single", "ddp2")
            for name in order:
                samples[name].append(train(root, 2 if name == "ddp2" else 1, name))
    ratios = [a["tokens_per_s"] / b["tokens_per_s"] for a, b in zip(samples["ddp2"], samples["single"], strict=True)]
    write(args.out, "ddp_bench", {
        "steps": STEPS, "global_batch": 12, "profile": "shakespeare_char (sdpa)",
        "ddp2_over_single_tokens_per_s": round(statistics.median(ratios), 3),
        "ddp2_tokens_per_s_median": round(statistics.median(s["tokens_per_s"] for s in samples["ddp2"]), 1),
        "single_tokens_per_s_median": round(statistics.median(s["tokens_per_s"] for s in samples["single"]), 1),
        "final_val_loss_ddp2": [round(s["val_loss"], 5) for s in samples["ddp2"]],
        "final_val_loss_single": [round(s["val_loss"], 5) for s in samples["single"]],
        "max_val_loss_difference": round(max(abs(a["val_loss"] - b["val_loss"])
                                             for a, b in zip(samples["ddp2"], samples["single"], strict=True)), 6),
        "load_avg_at_end": os.getloadavg(),
    })


if __name__ == "__main__":
    main()
