"""Self-consistency on a checkable task: accuracy of one sample vs a K=5 vote.

A small char model is trained on two-digit additions (``37+58=95``); held-out problems are
answered greedily, by one sample at the vote's temperature, and by ``voter.self_consistency``
over K samples (numeric normalisation, ties by mean log-probability). Measured at several
checkpoints of one run, so the effect shows at different levels of skill.
"""

from __future__ import annotations

import random
import tempfile
import time
from pathlib import Path

import torch
from common import arguments, write

from apt.checkpoint import load_model
from apt.generate import sample
from apt.profile import load_profile
from apt.registry import default_registry
from apt.trainer import Trainer


def problems(rng: random.Random, n: int, exclude: set[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    while len(out) < n:
        pair = (rng.randrange(100), rng.randrange(100))
        if pair not in exclude:
            out.append(pair)
    return out


def main() -> None:
    p = arguments(__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--questions", type=int, default=300)
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--temperature", type=float, default=0.8)
    ns = p.parse_args()
    torch.set_num_threads(2)
    rng = random.Random(0)
    held_out = problems(rng, ns.questions, set())
    train_pairs = problems(rng, 40_000, set(held_out))
    work = Path(tempfile.mkdtemp(prefix="apt-voting-"))
    corpus = work / "additions.txt"
    corpus.write_text("".join(f"{a}+{b}={a + b}\n" for a, b in train_pairs))
    every = ns.steps // 3
    profile = load_profile("tiny_debug", [
        f"data.train_path={corpus}", "data.val_fraction=0.02", "model.n_layer=3", "model.n_head=4",
        "model.d_model=128", "model.block_size=32", "model.attention=sdpa", f"train.max_iters={ns.steps}",
        "train.batch_size=32", "train.lr=2e-3", "train.warmup_iters=50", f"train.eval_interval={every}",
        "train.eval_iters=5", f"checkpoint.every={every}", "checkpoint.keep_last=5", f"checkpoint.dir={work / 'run'}",
        "logging.progress=false", "train.threads=2",
    ])
    started = time.perf_counter()
    Trainer(profile).run()
    train_seconds = time.perf_counter() - started

    voter = default_registry().make("voter", "self_consistency",
                                    {"k": ns.k, "temperature": ns.temperature, "normalise": "numeric"}).build()
    rows = []
    for ckpt in sorted((work / "run" / "checkpoints").glob("step-*.pt")):
        loaded = load_model(ckpt)
        greedy = single = voted = agree = 0
        started = time.perf_counter()
        for i, (a, b) in enumerate(held_out):
            prompt, truth = f"\n{a}+{b}=", str(a + b)
            common = dict(max_new_tokens=4, stop="\n", seed=i)
            greedy += sample(loaded.model, loaded.tokenizer, prompt, temperature=0, **common)[0].text == truth
            cands = sample(loaded.model, loaded.tokenizer, prompt, temperature=ns.temperature, num_samples=ns.k,
                           **common)
            single += cands[0].text == truth
            result = voter.vote([c.text for c in cands], [c.mean_logprob for c in cands])
            voted += result.normalised == truth
            agree += result.agreement
        n = len(held_out)
        rows.append({"step": loaded.state["step"], "greedy_accuracy": greedy / n, "single_sample_accuracy": single / n,
                     f"vote_k{ns.k}_accuracy": voted / n, "mean_agreement": agree / n,
                     "vote_gain_over_single": (voted - single) / n, "eval_seconds": time.perf_counter() - started})
        print(rows[-1], flush=True)
    write(ns.out, "voting_bench", {
        "task": "two-digit addition a+b=, answers checked exactly; held-out problems never seen in training",
        "model": "char LM, 3 layers, d_model 128, sdpa", "train_steps": ns.steps, "train_seconds": train_seconds,
        "questions": ns.questions, "k": ns.k, "temperature": ns.temperature, "normalise": "numeric",
        "checkpoints": rows,
    })


if __name__ == "__main__":
    main()
