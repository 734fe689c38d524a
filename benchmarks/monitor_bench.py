"""Gradient-monitor overhead: shakespeare_char step time with apt-plugin-monitor on vs off.

    python benchmarks/monitor_bench.py --out benchmarks/results/monitor_bench.json

Three trainers of the same profile in one process on 2 threads: without the monitor, with it at
``log_every=10`` (target: at most 2% slower) and at ``log_every=1`` (reported). One measurement
is 10 optimizer steps through ``Trainer.train_step``, so each holds exactly one log step at
``log_every=10``; rounds are interleaved and compared by the median of per-round ratios.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable

import torch
from common import SHARED_DATA, arguments, interleave, paired_ratio, timed, write

from apt.profile import load_profile
from apt.trainer import Trainer

STEPS = 10


def runner(*extra: str) -> tuple[Trainer, Callable[[], float]]:
    data = [f"data.train_path={SHARED_DATA}"] if SHARED_DATA.is_file() else []
    profile = load_profile("shakespeare_char", [
        *data, "model.attention=sdpa", "train.threads=2", "logging.jsonl=false", "logging.progress=false",
        f"checkpoint.dir={tempfile.mkdtemp()}", *extra])
    trainer = Trainer(profile, echo=lambda s: None)
    for _ in range(STEPS):  # warm up allocator and kernels
        trainer.train_step()
    return trainer, lambda: timed(trainer.train_step, STEPS)


def main() -> None:
    p = arguments(__doc__.splitlines()[0])
    args = p.parse_args()
    torch.set_num_threads(2)
    variants = {}
    trainers = {}
    for name, extra in (("off", ()), ("log_every_10", ("plugins.monitor.enabled=true", "plugins.monitor.log_every=10")),
                        ("log_every_1", ("plugins.monitor.enabled=true", "plugins.monitor.log_every=1"))):
        trainers[name], variants[name] = runner(*extra)
    assert "monitor" not in trainers["off"].host.names() and "monitor" in trainers["log_every_10"].host.names()
    samples = interleave(variants, args.rounds)
    ratio_10 = paired_ratio(samples, "log_every_10", "off")
    ratio_1 = paired_ratio(samples, "log_every_1", "off")
    write(args.out, "monitor_bench", {
        "profile": "shakespeare_char (attention sdpa)", "threads": 2, "rounds": args.rounds,
        "steps_per_sample": STEPS, "data": SHARED_DATA.name if SHARED_DATA.is_file() else "bundled corpus",
        "ms_per_step_median": {k: 1000 * sorted(v)[len(v) // 2] for k, v in samples.items()},
        "ratio_log_every_10_vs_off": ratio_10, "target_log_every_10": "<= 1.02", "meets_target": ratio_10 <= 1.02,
        "ratio_log_every_1_vs_off": ratio_1,
        "samples_s_per_step": samples,
    })


if __name__ == "__main__":
    main()
