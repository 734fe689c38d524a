"""``apt train`` and ``apt eval``."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from apt.cli import ArgumentParser
from apt.errors import AptError


def run(command: str, argv: Sequence[str]) -> int:
    return {"train": train, "eval": evaluate}[command](argv)


def train(argv: Sequence[str]) -> int:
    from apt.profile import load_profile, split_seed_flags

    rest, seed_sets = split_seed_flags(argv)
    p = ArgumentParser(prog="apt train", description="train a model from a profile")
    p.add_argument("-p", "--profile", required=True, help="YAML file, or the name of a shipped profile")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a profile value (repeatable); --model.attention_name X also works")
    p.add_argument("--resume", default="none", metavar="auto|PATH|none",
                   help="auto: continue from the run directory's latest checkpoint")
    p.add_argument("--strict", action="store_true", help="fail instead of falling back to another provider")
    p.add_argument("--dry-run", action="store_true", help="validate, print the model size and epoch plan, exit")
    args = p.parse_args(rest)
    profile = load_profile(args.profile, [*args.sets, *seed_sets])
    if args.dry_run:
        return _dry_run(profile, args.strict)

    from apt.trainer import Trainer

    result = Trainer(profile, strict=args.strict, resume=args.resume).run()
    best = f"{result.best_val_loss:.4f}" if result.best_val_loss is not None else "n/a"
    print(f"done: {result.stop_reason} at step {result.step} | best val loss {best} | run dir {result.run_dir}")
    return 0


def _dry_run(profile, strict: bool) -> int:
    import torch

    from apt.data import load_corpus
    from apt.model import ModelBuilder
    from apt.schedules import Schedule

    t = profile.train
    corpus = load_corpus(profile.data, profile.model.block_size)
    with torch.device("meta"):
        built = ModelBuilder(profile, corpus.tokenizer.vocab_size, strict=strict).build()
    per_epoch = t.epoch_iters or max(1, len(corpus.train) // (t.batch_size * t.grad_accum * profile.model.block_size))
    schedule = Schedule(profile.schedules, t.max_iters, per_epoch)
    print(f"profile {profile.name}: {built.model.num_params():,} parameters | "
          + ", ".join(f"{k} {v['name']} {v['version']}" for k, v in built.providers.items()))
    print(f"data: {len(corpus.train):,} training tokens, {len(corpus.val):,} validation tokens, "
          f"vocabulary {corpus.tokenizer.vocab_size}")
    print(f"plan: {t.max_iters} steps, {per_epoch} per epoch, {schedule.total_epochs} epochs")
    for epoch in range(1, schedule.total_epochs + 1):
        schedule.step = (epoch - 1) * per_epoch
        shown = " ".join(f"{k}={'on' if v is True else 'off' if v is False else f'{v:.4g}'}"
                         for k, v in schedule.snapshot().items())
        last = min(epoch * per_epoch, t.max_iters)
        print(f"  epoch {epoch}: steps {schedule.step + 1}-{last}" + (f"  {shown}" if shown else ""))
    return 0


def checkpoint_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="run directory, checkpoint file or quantised model directory")
    p.add_argument("--device", default="cpu")


def evaluate(argv: Sequence[str]) -> int:
    p = ArgumentParser(prog="apt eval", description="loss and perplexity on a text or JSONL file")
    checkpoint_args(p)
    p.add_argument("--data", required=True, help="text or JSONL file")
    p.add_argument("--format", choices=["auto", "text", "jsonl"], default="auto")
    p.add_argument("--jsonl-field", default="text")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    args = p.parse_args(argv)

    import math
    from pathlib import Path

    import numpy as np

    from apt.checkpoint import load_model
    from apt.data import read_chunks
    from apt.generate import evaluate_tokens

    loaded = load_model(args.checkpoint, device=args.device)
    ids: list[int] = []
    for chunk in read_chunks(Path(args.data), args.format, args.jsonl_field, "--data"):
        ids.extend(loaded.tokenizer.encode(chunk))
    if len(ids) < 2:
        raise AptError(f"--data {args.data}: needs at least 2 tokens of text")
    loss, count = evaluate_tokens(loaded.model, np.asarray(ids), device=args.device)
    result = {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": count,
              "checkpoint": str(loaded.path), "step": loaded.state["step"]}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"loss {loss:.4f} | perplexity {result['perplexity']:.3f} | {count:,} tokens | "
              f"checkpoint {loaded.path} (step {result['step']})")
    return 0
