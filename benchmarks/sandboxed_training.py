"""Sandboxed vs in-process training of ``shakespeare_char`` (sdpa and tva): tokens/s and extra start-up.

Each round runs ``apt train`` twice per attention provider, once in-process and once with
``--sandbox`` (the whole job inside apt-sandbox), in rotating order; tokens/s is the median of the
trainer's own logged rates after the first interval, compared as the median of per-round ratios.
The extra start-up is the paired difference in wall time of ``apt train --dry-run`` (imports
torch, reads the corpus, builds the model on the meta device) with and without ``--sandbox``.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from common import SHARED_DATA, arguments, interleave, paired_ratio, write


def _train_argv(attention: str, steps: int, run_dir: Path) -> list[str]:
    data = ["--set", f"data.train_path={SHARED_DATA}"] if SHARED_DATA.is_file() else []
    return [sys.executable, "-m", "apt", "train", "-p", "shakespeare_char", *data,
            "--set", f"model.attention={attention}", "--set", f"train.max_iters={steps}",
            "--set", "train.log_interval=10", "--set", f"train.eval_interval={steps}", "--set", "train.eval_iters=1",
            "--set", f"checkpoint.every={steps}", "--set", f"checkpoint.dir={run_dir}", "--set", "logging.progress=false",
            "--overwrite"]


def tokens_per_s(attention: str, steps: int, sandboxed: bool, work: Path, env: dict[str, str]) -> Callable[[], float]:
    run_dir = work / f"{attention}-{'jail' if sandboxed else 'local'}"

    def measure() -> float:
        argv = [*_train_argv(attention, steps, run_dir), *(["--sandbox"] if sandboxed else [])]
        subprocess.run(argv, check=True, env=env, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        rates = [r["tokens_per_s"] for r in records if r.get("event") == "step"][1:]
        return statistics.median(rates)
    return measure


def startup(sandboxed: bool, work: Path, env: dict[str, str]) -> Callable[[], float]:
    def measure() -> float:
        argv = [sys.executable, "-m", "apt", "train", "-p", "shakespeare_char", "--dry-run",
                "--set", f"checkpoint.dir={work / 'dry'}", *(["--sandbox"] if sandboxed else [])]
        start = time.perf_counter()
        subprocess.run(argv, check=True, env=env, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return time.perf_counter() - start
    return measure


def main() -> None:
    p = arguments(__doc__)
    p.add_argument("--steps", type=int, default=120, help="training steps per run")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="apt-bench-jail-") as tmp:
        work = Path(tmp)
        env = {**os.environ, "APT_HOME": str(work / "home")}
        speed: dict[str, float] = {}
        medians: dict[str, dict[str, float]] = {}
        for attention in ("sdpa", "tva"):
            samples = interleave({"in_process": tokens_per_s(attention, args.steps, False, work, env),
                                  "sandboxed": tokens_per_s(attention, args.steps, True, work, env)}, args.rounds)
            speed[attention] = round(paired_ratio(samples, "sandboxed", "in_process"), 4)
            medians[attention] = {k: round(statistics.median(v), 1) for k, v in samples.items()}
        starts = interleave({"in_process": startup(False, work, env), "sandboxed": startup(True, work, env)},
                            args.rounds)
        extra = statistics.median(a - b for a, b in zip(starts["sandboxed"], starts["in_process"], strict=True))
    write(args.out, "sandboxed_training", {
        "steps": args.steps, "rounds": args.rounds,
        "tokens_per_s_median": medians,
        "ratio_sandboxed_vs_in_process": speed,
        "dry_run_median_s": {k: round(statistics.median(v), 3) for k, v in starts.items()},
        "extra_startup_s": round(extra, 3),
        "targets": {"tokens/s >= 0.97x in-process": all(r >= 0.97 for r in speed.values()),
                    "extra start-up <= 1.5 s": extra <= 1.5}})


if __name__ == "__main__":
    main()
