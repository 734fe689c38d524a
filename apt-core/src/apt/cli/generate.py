"""``apt generate``: sampling, optionally conditioned on retrieved passages and decided by a vote.

Retrieval and voting are providers (``retriever.*``, ``voter.*``) from their own packages; this
module only wires them: options come from the checkpoint's profile (``providers.<kind>.<name>``)
overridden by flags, so a template set in the profile applies without repeating it here.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from apt import jail
from apt.cli import ArgumentParser
from apt.cli.run import checkpoint_args
from apt.errors import AptError
from apt.home import apt_home

if TYPE_CHECKING:
    from apt.retrieval import Retrieval
    from apt.voting import Vote

log = logging.getLogger("apt")


def run(command: str, argv: Sequence[str]) -> int:
    return generate(argv)


def parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="apt generate", description="sample text from a checkpoint")
    checkpoint_args(p)
    p.add_argument("--prompt", help="text to continue (default: a newline)")
    p.add_argument("--prompt-file", type=Path, metavar="FILE",
                   help="continue every line of FILE (one prompt per line), --batch at a time")
    p.add_argument("--batch", type=int, default=8, metavar="N",
                   help="with --prompt-file: prompts decoded together (default 8); output equals one by one")
    p.add_argument("--no-cache", action="store_true",
                   help="recompute the whole context for every token instead of using the KV cache (same output)")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8, help="0 decodes greedily")
    p.add_argument("--top-k", type=int, default=200, help="sample among the K most likely tokens")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--stop", help="end the answer before this text (e.g. a newline: $'\\n')")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    m = p.add_argument_group("media (a checkpoint trained with model.encoders)")
    m.add_argument("--image", type=Path, metavar="FILE", help="caption or answer about this image (PNG, JPEG)")
    m.add_argument("--audio", type=Path, metavar="FILE", help="transcribe or answer about this WAV file")
    retrieval_and_vote_args(p)
    return p


def retrieval_and_vote_args(p: argparse.ArgumentParser) -> None:
    """``--index`` and ``--vote`` with their options: the same for ``apt generate`` and ``apt serve``."""
    r = p.add_argument_group("retrieval (pip install apt-plugin-retriever)")
    r.add_argument("--retriever", help="retriever provider: bm25 (default when --index is given) or dense")
    r.add_argument("--index", type=Path, help="index file from 'apt index build'")
    r.add_argument("--passages", type=int, default=3, metavar="N", help="passages to retrieve (default 3)")
    r.add_argument("--embedding-model", help="local sentence-embedding model directory (retriever dense)")
    v = p.add_argument_group("self-consistency (pip install apt-plugin-voter)")
    v.add_argument("--vote", metavar="k=K[,KEY=VALUE]",
                   help="sample K answers and keep the majority, e.g. k=5 or k=5,normalise=numeric")
    v.add_argument("--sandbox", action="store_true",
                   help="run the vote in apt-sandbox (always so for a voter whose package requires it)")
    v.add_argument("--vote-threshold", type=float, metavar="NATS",
                   help="vote only when the next-token entropy exceeds this (default: the checkpoint's "
                        "vote_threshold schedule, else the voter's config)")


def check_retrieval_and_vote_args(args: argparse.Namespace) -> None:
    if args.passages < 1:
        raise AptError(f"--passages must be >= 1, got {args.passages}")
    if (args.retriever or args.embedding_model) and args.index is None:
        raise AptError("--retriever needs --index INDEX (build one with: apt index build --docs DIR --out INDEX)")
    if (args.vote_threshold is not None or args.sandbox) and args.vote is None:
        flag, example = (("--vote-threshold", "--vote-threshold 1.0") if args.vote_threshold is not None
                         else ("--sandbox", "--sandbox"))
        raise AptError(f"{flag} only applies with --vote (e.g. --vote k=5 {example})")


def open_retrieval_and_vote(args: argparse.Namespace, loaded: Any) -> tuple[Retrieval | None, Vote | None]:
    """The retrieval and the vote the flags ask for, configured from the checkpoint's profile."""
    from apt.retrieval import Retrieval
    from apt.voting import Vote

    retrieval = vote = None
    if args.index is not None:
        retrieval = Retrieval(loaded.profile, args.index, retriever=args.retriever, passages=args.passages,
                              embedding_model=args.embedding_model)
    if args.vote is not None:
        vote = Vote(args.vote, loaded.profile, loaded.state.get("schedule", {}), threshold=args.vote_threshold,
                    sandboxed=args.sandbox)
    return retrieval, vote


def generate(argv: Sequence[str]) -> int:
    args = parser().parse_args(argv)
    plan = jail.plan_generate(args)
    if plan is not None and jail.decide("generate", plan[0], None):
        return jail.run("generate", argv, readable=plan[1], writable=[apt_home() / "cache"], args=args,
                        untrusted=plan[0])
    if args.prompt_file is not None:
        return _generate_file(args)
    if args.image is not None or args.audio is not None:
        return _generate_media(args)
    if args.prompt is None:
        args.prompt = "\n"
    if args.max_new_tokens < 0 or args.top_k < 1 or args.temperature < 0:
        raise AptError("--max-new-tokens must be >= 0, --top-k >= 1 and --temperature >= 0")
    check_retrieval_and_vote_args(args)

    from apt.checkpoint import load_model
    from apt.generate import decode, next_token_probs, sample

    loaded = load_model(args.checkpoint, device=args.device)
    model, tokenizer = loaded.model, loaded.tokenizer
    retrieval, vote = open_retrieval_and_vote(args, loaded)
    report: dict[str, Any] = {"prompt": args.prompt}
    say = _printer(args.json)
    prompt, evidence = args.prompt, None
    if retrieval is not None:
        found = retrieval.prepare(model, tokenizer, args.prompt, max_new_tokens=args.max_new_tokens,
                                  device=args.device)
        prompt, evidence, report["passages"] = found.prompt, found.evidence, found.passages
        say(f"retrieved {len(found.passages)} passages (retriever.{retrieval.name}, {args.index}):")
        for p in found.passages:
            shown = " ".join(p["text"].split())
            say(f"  [{p['rank']}] score {p['score']:.4f}  {p['source']}  {shown[:100]}"
                f"{'...' if len(shown) > 100 else ''}")
        if found.kept < len(found.passages) or found.cut:
            say(f"  {found.kept} of them fit the model's {model.dims.block_size}-token context with the prompt"
                + (", the last cut short" if found.cut else ""))
        if evidence is not None:
            say(f"  evidence from {found.kept} passages conditions the model through align "
                f"{loaded.state.get('providers', {}).get('align', {}).get('name', '')}".rstrip())

    voting = vote is not None
    if vote is not None and vote.threshold is not None:
        voting, report["entropy"] = vote.wanted(next_token_probs(model, tokenizer, prompt, device=args.device))
        relation = ">" if voting else "<="
        say(f"vote: {'' if voting else 'skipped, '}next-token entropy {report['entropy']:.3f} nats {relation} "
            f"{vote.threshold:g} ({vote.source})")
        if not voting:
            report["vote"] = None
    stop = [args.stop] if args.stop else None
    if vote is not None and voting:
        candidates = vote.sequences(tokenizer.encode(prompt), max_new_tokens=args.max_new_tokens, top_k=args.top_k,
                                    seed=args.seed, stop=stop, evidence=evidence, device=args.device)
        decision = vote.decide(decode(candidates, model, tokenizer, rows=len(candidates),
                                      use_cache=not args.no_cache))
        report["vote"] = decision.report
        for line in vote.describe(decision):
            say(line)
        text = decision.winner
    else:
        text = sample(model, tokenizer, prompt, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                      top_k=args.top_k, seed=args.seed, device=args.device, stop=args.stop, evidence=evidence,
                      use_cache=not args.no_cache)[0].text
    report["text"] = text
    if args.json:
        print(json.dumps(report))
    else:
        if args.index is not None or args.vote is not None:
            print("---")
        print(args.prompt + text)
    return 0


def _generate_media(args: argparse.Namespace) -> int:
    """``--image`` / ``--audio``: the answer after the media's slots and the prompt (default empty)."""
    for flag, value in (("--index", args.index), ("--vote", args.vote), ("--prompt-file", args.prompt_file)):
        if value is not None:
            raise AptError(f"{flag} does not combine with --image/--audio yet; drop one of them")
    if args.max_new_tokens < 0 or args.top_k < 1 or args.temperature < 0:
        raise AptError("--max-new-tokens must be >= 0, --top-k >= 1 and --temperature >= 0")
    from apt.checkpoint import load_model
    from apt.generate import sample
    from apt.media import MediaSpec, prompt_batch

    loaded = load_model(args.checkpoint, device=args.device)
    spec = MediaSpec.from_profile(loaded.profile)
    if spec is None:
        raise AptError(f"--checkpoint {args.checkpoint} is a text-only model (no model.encoders): drop --image/--audio")
    prompt = args.prompt or ""
    files = {m: path for m, path in (("image", args.image), ("audio", args.audio)) if path is not None}
    media = prompt_batch(spec, loaded.tokenizer, prompt, files)
    text = sample(loaded.model, loaded.tokenizer, prompt, max_new_tokens=args.max_new_tokens,
                  temperature=args.temperature, top_k=args.top_k, seed=args.seed, device=args.device,
                  stop="\n" if args.stop is None else args.stop, media=media)[0].text
    if args.json:
        print(json.dumps({"prompt": prompt, **{m: str(f) for m, f in files.items()}, "text": text}))
    else:
        print(prompt + text)
    return 0


def _generate_file(args: argparse.Namespace) -> int:
    """``--prompt-file``: every line continued as ``--prompt LINE`` would continue it, ``--batch`` together."""
    if args.prompt is not None:
        raise AptError("give --prompt or --prompt-file, not both")
    if args.index is not None or args.vote is not None:
        raise AptError("--prompt-file generates plain samples: --index and --vote take one --prompt")
    if args.batch < 1 or args.max_new_tokens < 0 or args.top_k < 1 or args.temperature < 0:
        raise AptError("--batch must be >= 1, --max-new-tokens >= 0, --top-k >= 1 and --temperature >= 0")
    try:
        prompts = args.prompt_file.read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise AptError(f"cannot read --prompt-file {args.prompt_file}: {err.strerror or err}") from None
    except UnicodeDecodeError:
        raise AptError(f"--prompt-file {args.prompt_file} is not UTF-8 text") from None
    if not prompts:
        raise AptError(f"--prompt-file {args.prompt_file} has no lines")

    from apt.checkpoint import load_model
    from apt.generate import sample_many

    loaded = load_model(args.checkpoint, device=args.device)
    completions = sample_many(loaded.model, loaded.tokenizer, prompts, batch_size=args.batch,
                              max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                              seed=args.seed, stop=args.stop, use_cache=not args.no_cache, device=args.device)
    for i, (prompt, completion) in enumerate(zip(prompts, completions, strict=True)):
        if args.json:
            print(json.dumps({"prompt": prompt, "text": completion.text}))
        else:
            if i:
                print("---")
            print(prompt + completion.text)
    return 0


def _printer(quiet: bool) -> Any:
    return (lambda line: None) if quiet else print
