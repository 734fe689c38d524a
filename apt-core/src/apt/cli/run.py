"""``apt train`` and ``apt eval``."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from apt import jail
from apt.cli import ArgumentParser
from apt.errors import AptError
from apt.home import apt_home


def run(command: str, argv: Sequence[str]) -> int:
    return {"train": train, "eval": evaluate}[command](argv)


def train(argv: Sequence[str]) -> int:
    from apt import distributed

    return int(distributed.recorded(_train)(argv) or 0)


def _train(argv: Sequence[str]) -> int:
    from apt import distributed
    from apt.profile import load_profile, split_seed_flags

    rest, seed_sets = split_seed_flags(argv)
    p = ArgumentParser(prog="apt train", description="train a model from a profile")
    p.add_argument("-p", "--profile", nargs="?", action=_ProfileOrProfiler, default=None, metavar="PROFILE",
                   help="YAML file, or the name of a shipped profile; --profile with no value (after -p PROFILE) "
                        "times hooks per plugin and providers' forward/backward, and writes RUN_DIR/trace.json")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a profile value (repeatable); --model.attention_name X also works")
    p.add_argument("--resume", default="none", metavar="auto|PATH|none",
                   help="auto: continue from the run directory's newest checkpoint that verifies "
                        "(step-*.pt, sharded step-*.dcp/ or best; damaged ones are skipped with a warning)")
    p.add_argument("--overwrite", action="store_true",
                   help="start over in a run directory that already holds checkpoints or metrics (deletes them)")
    p.add_argument("--strict", action="store_true", help="fail instead of falling back to another provider")
    p.add_argument("--dry-run", action="store_true", help="validate, print the model size and epoch plan, exit")
    p.add_argument("--nproc", type=int, default=1, metavar="N",
                   help="train on N local ranks (gloo on CPU, NCCL on CUDA) under torch's elastic agent, with "
                        "DDP or FSDP2 (train.parallel); a failing rank stops them all and is named in one summary")
    p.add_argument("--max-restarts", type=int, default=0, metavar="N",
                   help="with --nproc: restart the group up to N times after a rank dies, resuming from the "
                        "last checkpoint (--resume auto)")
    p.set_defaults(profiler=False)
    jail.add_flags(p)
    args = p.parse_args(rest)
    if args.profile is None:
        p.error("the following arguments are required: -p/--profile PROFILE")
    plan = jail.plan_training(args.profile, [*args.sets, *seed_sets])
    if plan is not None and jail.decide("train", plan.untrusted, args.sandbox):
        readable, writable = plan.grants()
        return jail.run("train", argv, readable=readable, writable=writable, args=args, untrusted=plan.untrusted)
    profile = load_profile(args.profile, [*args.sets, *seed_sets])
    if args.nproc < 1 or args.max_restarts < 0:
        p.error("--nproc must be at least 1 and --max-restarts at least 0")
    if args.dry_run:
        return _dry_run(profile, args.strict, args.nproc)
    if args.max_restarts and args.nproc == 1 and not distributed.under_elastic():
        p.error("--max-restarts restarts a group of ranks: give --nproc N (N >= 2) as well")
    if args.nproc > 1 and not distributed.under_elastic():
        import torch

        cuda = profile.train.device.startswith("cuda") or (profile.train.device == "auto"
                                                           and torch.cuda.is_available())
        distributed.launch(argv, nproc=args.nproc, max_restarts=args.max_restarts,
                           log_dir=profile.run_dir / "elastic", cuda=cuda)
        print(f"done: {args.nproc} ranks finished | run dir {profile.run_dir}")
        return 0
    resume, overwrite = args.resume, args.overwrite
    if distributed.restart_count():
        resume, overwrite = "auto", False

    from apt.trainer import Trainer

    trainer = Trainer(profile, strict=args.strict, resume=resume, overwrite=overwrite)
    if args.profiler:
        from apt.profiler import StepProfiler

        trainer.profiler = StepProfiler(trainer)
    result = trainer.run()
    best = f"{result.best_val_loss:.4f}" if result.best_val_loss is not None else "n/a"
    print(f"done: {result.stop_reason} at step {result.step} | best val loss {best} | run dir {result.run_dir}")
    return 0


class _ProfileOrProfiler(argparse.Action):
    """``-p NAME`` and ``--profile NAME`` name the profile, as they always have; a bare ``--profile``
    (what the profiling flag of other tools looks like) turns the profiler on instead."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        if values is None and option_string == "--profile":
            namespace.profiler = True
        elif values is None:
            parser.error(f"{option_string}: expected a profile name or YAML file")
        elif namespace.profile is not None:
            parser.error(f"two profiles given ({namespace.profile!r} and {values!r}); "
                         f"to profile the run, put --profile without a value after -p {namespace.profile}")
        else:
            namespace.profile = values


def _dry_run(profile, strict: bool, nproc: int = 1) -> int:
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
    if nproc > 1:
        for line in memory_table(built.model, nproc):
            print(line)
    return 0


def memory_table(model: Any, nproc: int) -> list[str]:
    """Per-rank memory of the fp32 training state on ``nproc`` ranks: DDP keeps a full copy of
    weights, gradients and AdamW's two moments on every rank, FSDP (one shard per block) divides
    all of them by the rank count and briefly gathers one block's weights at a time. Activations
    are left out: they depend on the batch, not on the parallelism."""
    total = sum(p.numel() for p in model.parameters())
    largest = max((sum(p.numel() for p in block.parameters()) for block in model.blocks), default=0)
    shard = -(-total // nproc)

    def gib(count: int) -> str:
        return f"{count * 4 / 2**30:.3f} GiB"

    rows = [("DDP", total, total, 2 * total, 4 * total),
            ("FSDP", shard, shard, 2 * shard, 4 * shard + largest)]
    lines = [f"memory per rank on {nproc} ranks (fp32 weights, gradients, AdamW moments; no activations):",
             f"  {'':<5} {'weights':>12} {'gradients':>12} {'optimizer':>12} {'peak':>12}"]
    lines += [f"  {name:<5} {gib(w):>12} {gib(g):>12} {gib(o):>12} {gib(peak):>12}" for name, w, g, o, peak in rows]
    lines.append(f"  FSDP peak adds one gathered block ({largest:,} parameters)")
    return lines


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
    jail.add_flags(p)
    args = p.parse_args(argv)
    untrusted = jail.plan_checkpoint(args.checkpoint)
    if untrusted is not None and jail.decide("eval", untrusted, args.sandbox):
        return jail.run("eval", argv, readable=[Path(args.checkpoint), Path(args.data)],
                        writable=[apt_home() / "cache"], args=args, untrusted=untrusted)

    import math

    import numpy as np

    from apt.checkpoint import load_model
    from apt.data import read_chunks
    from apt.generate import evaluate_tokens

    loaded = load_model(args.checkpoint, device=args.device)
    if loaded.profile.model.encoders:
        return _evaluate_media(args, loaded)
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


def _evaluate_media(args: Any, loaded: Any) -> int:
    """Loss on the text of a multimodal JSONL and task accuracy: the greedy answer from each record's
    media (its text unseen) against its text, exact match."""
    import math

    from apt.media import MediaSpec, accuracy, evaluate_records, read_records, transcribe

    spec = MediaSpec.from_profile(loaded.profile)
    assert spec is not None
    records = read_records(Path(args.data), spec, loaded.tokenizer, loaded.model.dims.block_size,
                           field_name=args.jsonl_field, key="--data")
    loss, count = evaluate_records(loaded.model, spec, records.items, device=args.device)
    answers = transcribe(loaded.model, spec, loaded.tokenizer, records.items, device=args.device)
    acc = accuracy(answers, records.items)
    result = {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": count, "accuracy": acc,
              "records": len(records), "checkpoint": str(loaded.path), "step": loaded.state["step"]}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"loss {loss:.4f} | accuracy {acc:.2%} ({round(acc * len(records))}/{len(records)} exact) | "
              f"{count:,} tokens | checkpoint {loaded.path} (step {result['step']})")
    return 0
