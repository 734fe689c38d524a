"""The HTTP side of ``apt serve`` (FastAPI): OpenAI's completions shape over an :class:`apt.serve.Engine`.

Imported only when a server starts, so FastAPI is needed only then (``apt-core[serve]``).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from apt.errors import AptError
from apt.generate import Sampling, Sequence, next_token_probs
from apt.serve import MAX_CHOICES, RATE_WINDOW, Engine, Job

if TYPE_CHECKING:
    from apt.retrieval import Retrieval
    from apt.voting import Vote

log = logging.getLogger("apt")


class CompletionRequest(BaseModel):
    """``POST /v1/completions``; ``top_k`` is an extension (as in vLLM), fields OpenAI has and APT does not are ignored."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    prompt: str | list[str] = ""
    max_tokens: int | None = Field(16, ge=0, le=1_000_000)
    temperature: float | None = Field(1.0, ge=0.0, le=2.0)
    top_p: float | None = Field(1.0, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    n: int | None = Field(1, ge=1, le=MAX_CHOICES)
    seed: int | None = Field(None, ge=-(2**63), lt=2**63)
    stream: bool | None = False


class RequestError(Exception):
    """A request the server refuses: an HTTP status and OpenAI's error fields."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


def create_app(engine: Engine, model_name: str, *, retrieval: Retrieval | None = None,
               vote: Vote | None = None) -> FastAPI:
    """The HTTP API over a started :class:`Engine`; with ``retrieval`` every prompt is augmented as
    ``apt generate --index`` augments it, with ``vote`` every answer is voted on as ``--vote`` does."""
    created = int(time.time())
    requests: collections.Counter[int] = collections.Counter()
    app = FastAPI(title="apt serve", docs_url=None, redoc_url=None)

    @app.exception_handler(RequestError)
    async def refused(request: Request, err: RequestError) -> JSONResponse:
        requests[err.status] += 1
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0] if err.errors() else {"msg": "invalid request", "loc": ()}
        loc = [str(part) for part in first.get("loc", ()) if part != "body"]
        message = str(first.get("msg", "invalid request"))
        if first.get("type") == "json_invalid":
            message, loc = "the request body is not valid JSON", []
        elif loc:
            message = f"{loc[0]}: {message}"
        requests[400] += 1
        return JSONResponse(RequestError(400, message, loc[0] if loc else None).body(), status_code=400)

    @app.exception_handler(Exception)
    async def crashed(request: Request, err: Exception) -> JSONResponse:
        log.exception("request failed")
        requests[500] += 1
        return JSONResponse(RequestError(500, f"internal error: {type(err).__name__}", kind="server_error").body(),
                            status_code=500)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": model_name, **engine.gauges()}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created,
                                            "owned_by": "apt"}]}

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(_metrics_text(engine, requests), media_type="text/plain; version=0.0.4")

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Any:
        return await _completions(engine, model_name, retrieval, vote, requests, body, request)

    return app


def _metrics_text(engine: Engine, requests: collections.Counter[int]) -> str:
    """Prometheus' text format: request counts by status, token and step counters, batch gauges."""
    g, c = engine.gauges(), engine.counters
    lines = ["# HELP apt_serve_requests_total Completion requests answered, by HTTP status.",
             "# TYPE apt_serve_requests_total counter"]
    lines += [f'apt_serve_requests_total{{code="{code}"}} {n}' for code, n in sorted(requests.items())]
    for name, kind, value, doc in [
        ("prompt_tokens_total", "counter", c["prompt_tokens"], "Prompt tokens received."),
        ("generated_tokens_total", "counter", c["generated_tokens"], "Tokens generated."),
        ("decode_steps_total", "counter", c["decode_steps"], "Batched decoding steps run."),
        ("failed_batches_total", "counter", c["failed_batches"], "Decoding steps that failed."),
        ("tokens_per_second", "gauge", g["tokens_per_second"], f"Tokens generated per second, last {RATE_WINDOW:g} s."),
        ("queue_depth", "gauge", g["queue_depth"], "Sequences waiting for a free row."),
        ("batch_size", "gauge", g["batch_size"], "Sequences in the running batch."),
        ("mean_batch_size", "gauge", c["decode_rows"] / max(1, c["decode_steps"]), "Mean rows per step."),
        ("max_batch", "gauge", g["max_batch"], "Rows of the batch (--max-batch)."),
    ]:
        lines += [f"# HELP apt_serve_{name} {doc}", f"# TYPE apt_serve_{name} {kind}", f"apt_serve_{name} {value:g}"]
    return "\n".join(lines) + "\n"


async def _completions(engine: Engine, model_name: str, retrieval: Retrieval | None, vote: Vote | None,
                       requests: collections.Counter[int], body: CompletionRequest, request: Request) -> Any:
    """``POST /v1/completions``: validate, queue the choices' sequences, then stream or collect them."""
    if body.model is not None and body.model != model_name:
        raise RequestError(404, f"the model {body.model!r} does not exist; this server has {model_name!r}",
                           "model", "model_not_found")
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    n = body.n or 1
    if not prompts:
        raise RequestError(400, "prompt: give at least one prompt", "prompt")
    if len(stops) > 4:
        raise RequestError(400, "stop: at most 4 stop sequences", "stop")
    if vote is not None and n > 1:
        raise RequestError(400, "n: this server votes (--vote), so each prompt gets one choice, the winner; "
                                "drop n", "n")
    rows_each = vote.samples if vote is not None else n
    if len(prompts) * rows_each > MAX_CHOICES:
        raise RequestError(400, f"prompt: prompts x {'the vote' if vote else 'n'} ({rows_each}) must be at most "
                                f"{MAX_CHOICES} sequences, got {len(prompts) * rows_each}", "prompt")
    try:
        for p in prompts:
            engine.tokenizer.encode(p)
    except AptError as err:
        raise RequestError(400, f"prompt: {err}", "prompt") from None
    max_tokens = 16 if body.max_tokens is None else body.max_tokens
    sampling = Sampling(body.temperature if body.temperature is not None else 1.0, body.top_k,
                        body.top_p if body.top_p is not None else 1.0)
    seed = body.seed if body.seed is not None else secrets.randbits(62)
    choices = [choice for i, p in enumerate(prompts)
               for choice in await _choices(engine, retrieval, vote, p, i * n, n, max_tokens, sampling, seed,
                                            stops)]
    sequences = [seq for choice in choices for seq in choice.sequences]
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()

    def post(event: tuple[Any, ...]) -> None:
        try:
            loop.call_soon_threadsafe(events.put_nowait, event)
        except RuntimeError:  # the event loop closed under a shutdown: nobody is listening
            job.cancelled = True

    job = Job(sequences, post)
    head = {"id": f"cmpl-{secrets.token_hex(12)}", "object": "text_completion", "created": int(time.time()),
            "model": model_name}
    usage = {"prompt_tokens": sum(len(seq.ids) for seq in sequences)}
    engine.submit(job)
    requests[200] += 1
    if body.stream:
        return StreamingResponse(_stream(engine, job, _pieces(job, events, choices, vote), head, choices),
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    texts = [""] * len(choices)
    reasons: list[str | None] = [None] * len(choices)

    async def collect() -> None:
        async for index, delta, reason in _pieces(job, events, choices, vote):
            texts[index] += delta
            reasons[index] = reason

    collecting = asyncio.ensure_future(collect())
    try:
        while not collecting.done():
            await asyncio.wait({collecting}, timeout=0.5)
            if not collecting.done() and await request.is_disconnected():
                requests[499] += 1
                return JSONResponse({}, status_code=499)
        collecting.result()
    finally:
        if not collecting.done():
            collecting.cancel()
        if None in reasons:
            engine.cancel(job)
    completion_tokens = sum(len(seq.tokens) for seq in sequences)
    return {**head, "choices": [{"text": text, "index": i, "logprobs": None, "finish_reason": reason,
                                 **choices[i].extras()}
                                for i, (text, reason) in enumerate(zip(texts, reasons, strict=True))],
            "usage": {**usage, "completion_tokens": completion_tokens,
                      "total_tokens": usage["prompt_tokens"] + completion_tokens}}


@dataclass(eq=False)
class Choice:
    """One answer of a request: one sequence, or the K candidates of a vote decided together."""

    index: int
    sequences: list[Sequence]
    #: Decided by a vote once all its candidates are done (False: the sequence's text is the answer).
    voted: bool = False
    passages: list[dict[str, Any]] | None = None
    entropy: float | None = None
    vote: dict[str, Any] | None = None

    def extras(self) -> dict[str, Any]:
        """What APT adds to OpenAI's choice (clients ignore unknown fields): the passages retrieval
        put before the prompt, and the vote (None: the entropy was under the threshold)."""
        out: dict[str, Any] = {}
        if self.passages is not None:
            out["passages"] = self.passages
        if self.entropy is not None:
            out["entropy"] = self.entropy
        if self.voted or self.entropy is not None:
            out["vote"] = self.vote
        return out


async def _choices(engine: Engine, retrieval: Retrieval | None, vote: Vote | None, prompt: str, first: int,
                   n: int, max_tokens: int, sampling: Sampling, seed: int, stops: list[str]) -> list[Choice]:
    """The choices for one prompt: retrieval and the vote's entropy check run on the decoding thread
    (it owns the model); the choices' sequences are then queued like any other."""
    model, tokenizer = engine.model, engine.tokenizer
    passages, evidence = None, None
    if retrieval is not None:
        found = await asyncio.wrap_future(engine.call(functools.partial(
            retrieval.prepare, model, tokenizer, prompt, max_new_tokens=max_tokens)))
        prompt, passages, evidence = found.prompt, found.passages, found.evidence
    ids = tokenizer.encode(prompt) or [0]
    if vote is None:
        return [Choice(first + j, [Sequence(ids, max_new_tokens=max_tokens, sampling=sampling, seed=seed + j,
                                            stop=stops, evidence=evidence)], passages=passages) for j in range(n)]
    voting, entropy = True, None
    if vote.threshold is not None:
        probs = await asyncio.wrap_future(engine.call(functools.partial(next_token_probs, model, tokenizer, prompt)))
        voting, entropy = vote.wanted(probs)
    if not voting:
        return [Choice(first, [Sequence(ids, max_new_tokens=max_tokens, sampling=sampling, seed=seed, stop=stops,
                                        evidence=evidence)], passages=passages, entropy=entropy)]
    candidates = vote.sequences(ids, max_new_tokens=max_tokens, top_k=sampling.top_k, top_p=sampling.top_p,
                                seed=seed, stop=stops, evidence=evidence)
    return [Choice(first, candidates, voted=True, passages=passages, entropy=entropy)]


async def _pieces(job: Job, events: asyncio.Queue[tuple[Any, ...]], choices: list[Choice],
                  vote: Vote | None) -> AsyncIterator[tuple[int, str, str | None]]:
    """(choice, new text, finish reason or None) as the engine produces them. A voted choice yields
    once, the winner, when its last candidate finishes (the voter may run in apt-sandbox: a thread)."""
    owner = [choice for choice in choices for _ in choice.sequences]  # the job's sequences, in order
    left = {id(choice): len(choice.sequences) for choice in choices}
    while any(left.values()):
        event = await events.get()
        if event[0] == "error":
            raise RequestError(500, event[1], kind="server_error")
        _, index, delta, reason = event
        choice = owner[index]
        left[id(choice)] -= reason is not None
        if not choice.voted:
            yield choice.index, delta, reason
        elif not left[id(choice)]:
            assert vote is not None
            try:
                decision = await asyncio.to_thread(vote.decide, [seq.completion() for seq in choice.sequences])
            except AptError as err:
                raise RequestError(500, f"the vote failed: {err}", kind="server_error") from None
            choice.vote = decision.report
            winner = next(seq for seq in choice.sequences if seq.text == decision.winner)
            yield choice.index, decision.winner, winner.finish_reason or "stop"


async def _stream(engine: Engine, job: Job, pieces: AsyncIterator[tuple[int, str, str | None]],
                  head: dict[str, Any], choices: list[Choice]) -> AsyncIterator[str]:
    """Server-Sent Events: one chunk per new piece of text, a last one per choice with its finish
    reason (and APT's extras), then ``data: [DONE]``. A client that goes away cancels this
    generator, which frees the rows."""
    left = len(choices)
    try:
        try:
            async for index, delta, reason in pieces:
                left -= reason is not None
                extras = choices[index].extras() if reason is not None else {}
                chunk = {**head, "choices": [{"text": delta, "index": index, "logprobs": None,
                                              "finish_reason": reason, **extras}]}
                yield f"data: {json.dumps(chunk)}\n\n"
        except RequestError as err:
            yield f"data: {json.dumps(err.body())}\n\n"
        except Exception as err:  # the stream ends with an error event, never a dropped connection
            log.exception("streaming failed")
            failed = RequestError(500, f"internal error: {type(err).__name__}", kind="server_error")
            yield f"data: {json.dumps(failed.body())}\n\n"
        yield "data: [DONE]\n\n"
    finally:
        if left:
            engine.cancel(job)
