"""``apt serve``: a checkpoint behind an OpenAI-compatible HTTP API (see :mod:`apt.serve`)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from apt.cli import ArgumentParser
from apt.cli.generate import check_retrieval_and_vote_args, open_retrieval_and_vote, retrieval_and_vote_args
from apt.cli.run import checkpoint_args
from apt.errors import AptError


def run(command: str, argv: Sequence[str]) -> int:
    return serve(argv)


def parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="apt serve",
                       description="serve a checkpoint: POST /v1/completions (OpenAI shape, streaming), "
                                   "GET /v1/models, /health, /metrics")
    checkpoint_args(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch", type=int, default=16, metavar="N",
                   help="sequences decoded together; more requests wait for a free row (default 16)")
    p.add_argument("--model-name", help="the model id clients send and /v1/models lists (default: the run's name)")
    p.add_argument("--no-cache", action="store_true", help="recompute every context instead of using the KV cache")
    retrieval_and_vote_args(p)
    return p


def serve(argv: Sequence[str]) -> int:
    args = parser().parse_args(argv)
    if args.max_batch < 1:
        raise AptError(f"--max-batch must be >= 1, got {args.max_batch}")
    if not 0 <= args.port <= 65535:
        raise AptError(f"--port must be 0..65535, got {args.port}")
    check_retrieval_and_vote_args(args)
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as err:
        raise AptError(f"apt serve needs FastAPI and uvicorn ({err.name} is missing): "
                       f"pip install 'apt-core[serve]'") from None

    from apt.checkpoint import load_model
    from apt.jail import refuse_untrusted
    from apt.registry import DEFAULTS
    from apt.serve import serve as run_server

    wanted = [("retriever", args.retriever or DEFAULTS["retriever"])] if args.index is not None else []
    wanted += [("voter", DEFAULTS["voter"])] if args.vote is not None else []
    refuse_untrusted("serve", args.checkpoint, wanted)
    loaded = load_model(args.checkpoint, device=args.device)
    retrieval, vote = open_retrieval_and_vote(args, loaded)
    name = args.model_name or loaded.profile.name or loaded.path.parent.name
    run_server(loaded.model, loaded.tokenizer, model_name=name, host=args.host, port=args.port,
               max_batch=args.max_batch, use_cache=not args.no_cache, retrieval=retrieval, vote=vote,
               announce=lambda line: print(line, flush=True))
    return 0
