"""Tokenizer choice, honestly: validation bits per byte of shakespeare_char models, char vs bpe, at equal wall time.

    python benchmarks/bpe_bench.py --out benchmarks/results/bpe_bench.json [--seconds 300]

A report, not a target. Each tokenizer gets a shakespeare_char-shaped model (4 layers, d_model 128,
block 64 tokens, sdpa, 2 threads) and the same training wall time: a short calibration measures its
steps/s (interleaved rounds, median), ``max_iters`` (and the cosine decay) is set so the schedule fits
the budget, and the two runs are trained in interleaved chunks, each stopped at its schedule's end or
at the budget, so a noisy neighbour slows both alike. Both are scored
on the same held-out text (the last 5% of the corpus, inside both validation splits) in bits per UTF-8
byte, which is comparable across vocabularies where per-token loss is not. A bpe token covers several
characters, so at block 64 the bpe model also sees a longer context; that is part of the choice.
"""

from __future__ import annotations

import math
import tempfile
import time

import numpy as np
import torch
from common import SHARED_DATA, arguments, write

from apt.data import bundled_corpus
from apt.generate import evaluate_tokens
from apt.profile import load_profile
from apt.trainer import Trainer

CHUNK = 10


def make(tokenizer: str, data: str, iters: int, extra: list[str]) -> Trainer:
    profile = load_profile("shakespeare_char", [
        f"data.train_path={data}", f"data.tokenizer={tokenizer}", "model.attention=sdpa", "train.threads=2",
        f"train.max_iters={iters}", f"train.lr_decay_iters={iters}", f"train.warmup_iters={min(100, iters // 10)}",
        "logging.jsonl=false", "logging.progress=false", f"checkpoint.dir={tempfile.mkdtemp()}", *extra])
    return Trainer(profile, echo=lambda s: None)


def steps_per_second(trainers: dict[str, Trainer], rounds: int = 5) -> dict[str, float]:
    """Median steps/s per trainer over interleaved rounds (after a warm-up chunk each)."""
    samples: dict[str, list[float]] = {name: [] for name in trainers}
    for i in range(rounds + 1):
        for name, trainer in trainers.items():
            start = time.perf_counter()
            for _ in range(CHUNK):
                trainer.train_step()
            if i:
                samples[name].append(CHUNK / (time.perf_counter() - start))
    return {name: sorted(v)[len(v) // 2] for name, v in samples.items()}


def bits_per_byte(trainer: Trainer, text: str) -> tuple[float, int]:
    ids = np.asarray(trainer.tokenizer.encode(text))
    with torch.no_grad():
        loss, count = evaluate_tokens(trainer.model, ids)
    # evaluate_tokens predicts every token but the first; scale the mean to all of them.
    return loss * (len(ids) - 1) / math.log(2) / len(text.encode("utf-8")), len(ids)


def main() -> None:
    p = arguments(__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=300.0, help="training wall time per tokenizer")
    p.add_argument("--vocab-size", type=int, default=1024, help="providers.tokenizer.bpe.vocab_size")
    args = p.parse_args()
    torch.set_num_threads(2)
    data = str(SHARED_DATA if SHARED_DATA.is_file() else bundled_corpus())
    text = open(data, encoding="utf-8").read()
    held_out = text[int(len(text) * 0.95):]
    variants = {"char": [], "bpe": [f"providers.tokenizer.bpe.vocab_size={args.vocab_size}"]}
    rates = steps_per_second({name: make(name, data, 1000, extra) for name, extra in variants.items()})
    trainers = {name: make(name, data, max(CHUNK, int(rates[name] * args.seconds)), extra)
                for name, extra in variants.items()}
    spent = dict.fromkeys(trainers, 0.0)
    def running(name: str) -> bool:
        return trainers[name].step < trainers[name].profile.train.max_iters and spent[name] < args.seconds

    while any(running(name) for name in trainers):
        for name, trainer in trainers.items():
            if not running(name):
                continue
            start = time.perf_counter()
            for _ in range(min(CHUNK, trainer.profile.train.max_iters - trainer.step)):
                trainer.train_step()
            spent[name] += time.perf_counter() - start
    results = {}
    for name, trainer in trainers.items():
        bpb, tokens = bits_per_byte(trainer, held_out)
        results[name] = {"vocab_size": trainer.tokenizer.vocab_size, "steps": trainer.step,
                         "schedule_max_iters": trainer.profile.train.max_iters,
                         "train_seconds": round(spent[name], 1), "steps_per_s_calibrated": round(rates[name], 2),
                         "held_out_tokens": tokens, "bytes_per_token": round(len(held_out.encode()) / tokens, 3),
                         "val_bits_per_byte": round(bpb, 4),
                         "trainer_val_loss_nats_per_token": round(trainer.evaluate()["val_loss"], 4)}
    write(args.out, "bpe_bench", {
        "profile": "shakespeare_char (attention sdpa, 2 threads)", "budget_seconds_per_tokenizer": args.seconds,
        "data": SHARED_DATA.name if SHARED_DATA.is_file() else "bundled corpus",
        "held_out": "last 5% of the corpus, scored in bits per UTF-8 byte", "results": results,
        "bpe_minus_char_bits_per_byte": round(results["bpe"]["val_bits_per_byte"] - results["char"]["val_bits_per_byte"], 4),
    })


if __name__ == "__main__":
    main()
