"""``apt tune`` (apt-plugin-tune): a study on ``tiny_debug`` with the median pruner vs without pruning.

Both studies search the same space (``train.lr`` log-uniform over 1e-4..0.3, whose top end trains
badly, and the attention provider) with the same TPE seed, one worker each, and every trial is a
real ``apt train`` subprocess. Reported per study: wall time, best val loss, trials complete and
pruned, and steps trained in all (the work pruning saves, immune to a neighbour slowing the machine).
The issue's bar: pruning cuts wall time by >= 30% at an equal or better best loss.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import arguments, write

SEARCH = """\
search:
  train.lr: {type: float, low: 1.0e-4, high: 0.3, log: true}
  model.attention: {type: categorical, choices: [tva, sdpa]}
"""


def study(root: Path, pruner: str, trials: int, sets: list[str]) -> dict[str, Any]:
    shipped = Path(__file__).resolve().parent.parent / "apt-core" / "src" / "apt" / "profiles" / "tiny_debug.yaml"
    profile = root / f"tiny_debug_{pruner}.yaml"
    profile.write_text(shipped.read_text() + SEARCH)
    cmd = [sys.executable, "-m", "apt", "tune", "-p", str(profile), "--trials", str(trials), "--pruner", pruner,
           "--seed", "0", "--dir", str(root / pruner), *(a for s in sets for a in ("--set", s))]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"apt tune --pruner {pruner} failed:\n{done.stdout}\n{done.stderr}")
    lines = [line for line in done.stdout.splitlines() if line.startswith("trial ")]
    steps = 0
    for metrics in sorted((root / pruner / "trials").glob("*/metrics.jsonl")):
        steps += sum(json.loads(line).get("event") == "step" for line in metrics.read_text().splitlines() if line)
    best = next(line for line in done.stdout.splitlines() if "best trial" in line)
    return {"wall_s": round(wall, 1), "best_val_loss": float(best.split("val loss ")[1].split()[0]),
            "complete": sum(" complete:" in line for line in lines), "pruned": sum(" pruned " in line for line in lines),
            "steps_trained": steps, "trials": lines}


def main() -> None:
    p = arguments(__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=12)
    p.add_argument("--set", dest="sets", action="append", default=[], help="extra profile override for both studies")
    args = p.parse_args()
    sets = ["train.eval_interval=50", "train.min_lr=1.0e-5", "train.threads=2", "logging.progress=false", *args.sets]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        pruned = study(root, "median", args.trials, sets)
        unpruned = study(root, "none", args.trials, sets)
    write(args.out, "tune_bench", {
        "profile": "tiny_debug", "overrides": sets, "trials": args.trials, "search": SEARCH,
        "median_pruner": pruned, "no_pruner": unpruned,
        "wall_time_cut": round(1 - pruned["wall_s"] / unpruned["wall_s"], 3),
        "steps_cut": round(1 - pruned["steps_trained"] / unpruned["steps_trained"], 3),
        "best_loss_difference": round(pruned["best_val_loss"] - unpruned["best_val_loss"], 4),
    })


if __name__ == "__main__":
    main()
