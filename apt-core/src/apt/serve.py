"""``apt serve``: an OpenAI-compatible completions server with continuous batching.

One decoding thread owns the model and a :class:`apt.generate.Batcher`: every step it admits
waiting sequences into free rows (a request joins the running batch at the next step), gives
every active row one token and hands the new text to the request that owns it; finished and
abandoned rows leave at once. The HTTP side (FastAPI on uvicorn, imported only when the server
starts, so ``apt`` itself stays importable without them: ``pip install 'apt-core[serve]'``;
:mod:`apt.serve_http`) validates requests, queues their sequences and streams what the thread produces. A failure
while decoding fails the requests in the batch with a 500, never the server.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from apt.errors import AptError
from apt.generate import Batcher, Sequence

if TYPE_CHECKING:
    from apt.model import LanguageModel
    from apt.retrieval import Retrieval
    from apt.tokenizers import Tokenizer
    from apt.voting import Vote

log = logging.getLogger("apt")

T = TypeVar("T")

#: Most choices (prompts x n) one request may ask for: each takes a row of the batch.
MAX_CHOICES = 128
#: Seconds over which /metrics reports tokens per second.
RATE_WINDOW = 10.0


@dataclass(eq=False)
class Job:
    """A request's sequences and where their text goes: ``post`` runs on the decoding thread."""

    sequences: list[Sequence]
    post: Callable[[tuple[Any, ...]], None]
    cancelled: bool = False


class Engine:
    """The decoding thread and its queue; all model work happens on that thread."""

    def __init__(self, model: LanguageModel, tokenizer: Tokenizer, max_batch: int, *, use_cache: bool = True) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        self.batcher = Batcher(model, tokenizer, max_batch, use_cache=use_cache)
        self.cached = self.batcher.decoder.cached
        self._wake = threading.Condition()
        self._waiting: collections.deque[tuple[Job, int]] = collections.deque()
        self._calls: collections.deque[tuple[Callable[[], Any], concurrent.futures.Future[Any]]] = collections.deque()
        self._owners: dict[int, tuple[Job, int]] = {}
        self._stopping = False
        self._rate: collections.deque[tuple[float, int]] = collections.deque()
        self.counters = {"generated_tokens": 0, "prompt_tokens": 0, "decode_steps": 0, "decode_rows": 0,
                         "failed_batches": 0}
        self._thread = threading.Thread(target=self._run, name="apt-serve-decoder", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join(timeout=10)

    def submit(self, job: Job) -> None:
        with self._wake:
            self._waiting.extend((job, i) for i in range(len(job.sequences)))
            self.counters["prompt_tokens"] += sum(len(seq.ids) for seq in job.sequences)
            self._wake.notify()

    def call(self, fn: Callable[[], T]) -> concurrent.futures.Future[T]:
        """Run ``fn`` on the decoding thread between two steps (it owns the model): a retrieval's
        evidence vector or a vote's entropy check, without a second thread inside the model."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        with self._wake:
            self._calls.append((fn, future))
            self._wake.notify()
        return future

    def cancel(self, job: Job) -> None:
        """Abandon ``job`` (its client went away): its rows are freed before the next step."""
        with self._wake:
            job.cancelled = True
            self._wake.notify()

    def gauges(self) -> dict[str, float]:
        now = time.monotonic()
        recent = [(t, n) for t, n in list(self._rate) if now - t <= RATE_WINDOW]
        span = max(now - recent[0][0], 1.0) if recent else RATE_WINDOW
        return {"queue_depth": len(self._waiting), "batch_size": len(self.batcher.active),
                "tokens_per_second": sum(n for _, n in recent) / span, "max_batch": self.max_batch}

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._stopping and not self.batcher.active and not self._waiting and not self._calls:
                    self._wake.wait()
                if self._stopping:
                    return
                calls, self._calls = list(self._calls), collections.deque()
            for fn, future in calls:
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(fn())
                    except Exception as err:  # the caller gets it; the thread goes on
                        future.set_exception(err)
            with self._wake:
                live = [(job, i) for job, i in self._waiting if not job.cancelled]
                taken = live[:len(self.batcher.free) + self._abandoned()]
                self._waiting = collections.deque(live[len(taken):])
            for seq in list(self.batcher.active.values()):
                job, _ = self._owners[id(seq)]
                if job.cancelled:
                    self._leave(seq)
            try:
                self._step(taken)
            except Exception as err:  # one bad batch fails its requests, never the server
                log.exception("decoding step failed")
                self.counters["failed_batches"] += 1
                self._fail([*taken, *self._owners.values()], err)

    def _abandoned(self) -> int:
        return sum(1 for seq in self.batcher.active.values() if self._owners[id(seq)][0].cancelled)

    def _step(self, taken: list[tuple[Job, int]]) -> None:
        for job, i in taken:
            self._owners[id(job.sequences[i])] = (job, i)
        admitted = self.batcher.admit([job.sequences[i] for job, i in taken])
        with self._wake:
            self._waiting.extendleft(reversed(taken[len(admitted):]))
        for seq in admitted:
            if seq.finish_reason is not None:
                self._emit(seq)
        touched = self.batcher.step()
        if touched:
            self.counters["decode_steps"] += 1
            self.counters["decode_rows"] += len(touched)
            self.counters["generated_tokens"] += len(touched)
            self._rate.append((time.monotonic(), len(touched)))
            while self._rate and time.monotonic() - self._rate[0][0] > RATE_WINDOW:
                self._rate.popleft()
        for seq in touched:
            self._emit(seq)

    def _emit(self, seq: Sequence) -> None:
        job, index = self._owners[id(seq)]
        delta = seq.take_text()
        if seq.finish_reason is not None:
            self._owners.pop(id(seq), None)
        if not job.cancelled and (delta or seq.finish_reason is not None):
            job.post(("text", index, delta, seq.finish_reason))

    def _leave(self, seq: Sequence) -> None:
        self.batcher.release(seq)
        self._owners.pop(id(seq), None)

    def _fail(self, entries: list[tuple[Job, int]], err: Exception) -> None:
        jobs = {id(job): job for job, _ in entries}
        for job in jobs.values():
            for seq in job.sequences:
                self._leave(seq)
            if not job.cancelled:
                job.post(("error", f"generation failed: {type(err).__name__}: {err}"))
            job.cancelled = True


def serve(model: LanguageModel, tokenizer: Tokenizer, *, model_name: str, host: str = "127.0.0.1", port: int = 8000,
          max_batch: int = 16, use_cache: bool = True, retrieval: Retrieval | None = None, vote: Vote | None = None,
          announce: Callable[[str], None] = print) -> None:
    """Run the server until interrupted."""
    try:
        import uvicorn

        from apt.serve_http import create_app
    except ImportError as err:
        raise AptError(f"apt serve needs FastAPI and uvicorn ({err.name} is missing): "
                       f"pip install 'apt-core[serve]'") from None
    engine = Engine(model, tokenizer, max_batch, use_cache=use_cache)
    app = create_app(engine, model_name, retrieval=retrieval, vote=vote)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    engine.start()
    extras = "".join([f", retrieval.{retrieval.name} over {retrieval.index}" if retrieval else "",
                      f", voter.{vote.name} with {vote.samples} samples" if vote else ""])
    announce(f"apt serve: {model_name} on http://{host}:{port}/v1 (max batch {max_batch}, "
             f"KV cache {'on' if engine.cached else 'off'}{extras})")
    try:
        server.run()
    finally:
        engine.stop()
