"""Sampling text from a trained model."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Any, NamedTuple, cast

import numpy as np
import torch
import torch.nn.functional as F

from apt.batch import Media
from apt.data import sequential_windows, window_batch
from apt.model import LanguageModel
from apt.providers import EvidenceAligner
from apt.tokenizers import Tokenizer

log = logging.getLogger("apt")


class Completion(NamedTuple):
    text: str
    #: Mean log-probability of the generated tokens under the model (temperature 1), for ranking.
    mean_logprob: float
    tokens: int


@dataclass(frozen=True)
class Sampling:
    """How a row picks its next token: greedy at temperature 0, else from the tempered distribution
    truncated to the ``top_k`` most likely tokens and then to the smallest set holding ``top_p`` of the mass."""

    temperature: float = 0.8
    top_k: int | None = 200
    top_p: float = 1.0


def choose(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator | None) -> torch.Tensor:
    """Next tokens (R, 1) for float logits (R, V); one ``multinomial`` call over all rows, so rows share ``generator``."""
    if sampling.temperature <= 0:
        return logits.argmax(dim=-1, keepdim=True)
    scaled = logits / sampling.temperature
    if sampling.top_k is not None and sampling.top_k < scaled.size(-1):
        kth = torch.topk(scaled, sampling.top_k).values[:, [-1]]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    if sampling.top_p < 1.0:
        ranked, order = torch.sort(scaled, dim=-1, descending=True)  # (R, V)
        probs = torch.softmax(ranked, dim=-1)
        beyond = probs.cumsum(dim=-1) - probs > sampling.top_p
        scaled = scaled.scatter(-1, order, ranked.masked_fill(beyond, float("-inf")))
    return torch.multinomial(torch.softmax(scaled, dim=-1), 1, generator=generator)


class Decoder:
    """Next-token logits for rows that grow one token at a time: what every sampler here runs on.

    With the KV cache (the default when every attention module is
    :class:`apt.providers.SupportsKVCache`) a row is encoded once and each step feeds one token;
    without it each step re-runs the row's whole window, as generation always did. The window is
    the last ``block_size`` tokens, at positions ``0..block_size-1``, on both paths.

    Sliding rule: once a row's cache holds ``block_size`` tokens, the next token moves every
    position by one, so no cached key is valid any more; the row is re-encoded from its last
    ``block_size`` tokens, exactly the no-cache computation. Up to the block size a step costs one
    token; past it, one window, like the no-cache path. Rows are independent: each keeps its own
    length and positions (right padding inside one encoding call), so a row decoded in a batch
    gets the logits it would get alone, and rows may start and stop at any step.
    """

    def __init__(self, model: LanguageModel, rows: int, *, use_cache: bool = True,
                 evidence: torch.Tensor | None = None, media: Media | None = None) -> None:
        self.model = model
        self.block = model.dims.block_size
        self.rows = rows
        # Media reach the blocks through the fusion on every forward; the cache path has no media.
        self.media = media
        self.cached = use_cache and media is None and _cache_capable(model)
        self.cache = model.new_cache(rows) if self.cached else None
        self.windows: list[list[int]] = [[] for _ in range(rows)]
        self.filled = [0] * rows
        self.aligner = _aligner(model)
        #: Per row: the evidence (C,) its logits are conditioned on through the aligner, or None.
        self.evidence: list[torch.Tensor | None] = [None if evidence is None else evidence[row] for row in range(rows)]
        self.device = next(model.parameters()).device

    def start(self, rows: list[int], prompts: list[list[int]],
              evidence: list[torch.Tensor | None] | None = None) -> torch.Tensor:
        """(Re)start ``rows`` from non-empty token lists (with their evidence, (C,) or None, when
        given); the logits after each prompt (R, V), float."""
        for i, (row, ids) in enumerate(zip(rows, prompts, strict=True)):
            if not ids:
                raise ValueError("a prompt needs at least one token")
            self.windows[row] = list(ids[-self.block:])
            if evidence is not None:
                self.evidence[row] = evidence[i]
        return self._encode(rows)

    def step(self, rows: list[int], tokens: list[int]) -> torch.Tensor:
        """Append one token to each of ``rows``; the logits after it (R, V), float."""
        for row, token in zip(rows, tokens, strict=True):
            window = self.windows[row]
            window.append(token)
            if len(window) > self.block:
                del window[0]
        if self.cache is None:
            return self._encode(rows)
        slid = [row for row in rows if self.filled[row] >= self.block]
        if not slid:
            return self._decode(rows)
        kept = [row for row in rows if self.filled[row] < self.block]
        # A slid row stays slid until restarted, so its keys would never be read: skip writing them.
        parts = dict(zip(slid, self._encode(slid, fill=False), strict=True))
        if kept:
            parts.update(zip(kept, self._decode(kept), strict=True))
        return torch.stack([parts[row] for row in rows])

    def _decode(self, rows: list[int]) -> torch.Tensor:
        idx = torch.tensor([[self.windows[row][-1]] for row in rows], device=self.device)  # (R, 1)
        starts = [self.filled[row] for row in rows]
        out = self._run(idx, rows, starts)
        for row in rows:
            self.filled[row] += 1
        return out.logits[:, -1].float()

    def _encode(self, rows: list[int], *, fill: bool = True) -> torch.Tensor:
        lengths = [len(self.windows[row]) for row in rows]
        T = max(lengths)
        idx = torch.tensor([self.windows[row] + [0] * (T - len(self.windows[row])) for row in rows],
                           device=self.device)  # (R, T), right-padded: causal attention never reaches the pads
        out = self._run(idx, rows, [0] * len(rows), cached=fill)
        for row, length in zip(rows, lengths, strict=True):
            self.filled[row] = length
        last = torch.tensor(lengths, device=self.device) - 1
        return out.logits[torch.arange(len(rows), device=self.device), last].float()

    def _run(self, idx: torch.Tensor, rows: list[int], starts: list[int], *, cached: bool = True) -> Any:
        if self.media is not None:
            assert rows == list(range(self.rows)), "rows with media decode all together"
            out: Any = self.model(idx, self.media)
        elif self.cache is None or not cached:
            out = self.model(idx)
        else:
            every = len(rows) == self.rows and rows == list(range(self.rows))
            out = self.model.forward_cached(idx, self.cache, starts, None if every else rows)
        conditioned = [i for i, row in enumerate(rows) if self.evidence[row] is not None]
        if self.aligner is None or not conditioned:
            return out
        evidence = torch.stack([cast(torch.Tensor, self.evidence[rows[i]]) for i in conditioned]).to(self.device)
        view = self.aligner.evidence_view(out.hidden[conditioned], evidence, self.model.lm_head)  # (R', T, V)
        if len(conditioned) == len(rows):
            return view
        logits = out.logits.clone()
        logits[conditioned] = view.logits.to(logits.dtype)
        return out._replace(logits=logits)


def _cache_capable(model: LanguageModel) -> bool:
    if model.supports_kv_cache():
        return True
    kinds = sorted({type(cast(Any, block).attn).__name__ for block in model.blocks})
    _warn_once(f"attention {', '.join(kinds)} has no KV cache (apt.providers.SupportsKVCache): generation "
               f"recomputes the whole window for every token")
    return False


@functools.cache
def _warn_once(message: str) -> None:
    log.warning(message)


@torch.no_grad()
def sample(model: LanguageModel, tokenizer: Tokenizer, prompt: str, *, max_new_tokens: int = 200,
           temperature: float = 0.8, top_k: int | None = 200, seed: int = 1337, device: str = "cpu",
           num_samples: int = 1, stop: str | None = None, evidence: torch.Tensor | None = None,
           top_p: float = 1.0, use_cache: bool = True, media: tuple[list[int], Media] | None = None) -> list[Completion]:
    """Autoregressive sampling of ``num_samples`` continuations in one batch.

    The context is the last ``block_size`` tokens as it grows; ``temperature`` 0 decodes
    greedily. A continuation ends before the first ``stop`` string. ``evidence`` (1, d_model)
    conditions every step through the model's aligner (``align.bistate``'s evidence view), the
    path retrieval uses to reach the hidden states as well as the prompt. The rows share one
    generator (one draw per step over all of them); ``use_cache=False`` recomputes every window
    (:class:`Decoder`), for comparison. ``media`` (from :func:`apt.media.prompt_batch`) replaces the
    prompt's ids with a row that holds the media's slots, and generation stops where the window
    would slide past them.
    """
    gen = torch.Generator(device=device).manual_seed(seed)
    ids = tokenizer.encode(prompt) or [0]
    rows_media = None
    if media is not None:
        ids = media[0]
        rows_media = media[1].repeat(num_samples).to(device)
        max_new_tokens = min(max_new_tokens, model.dims.block_size - len(ids))
    rows = list(range(num_samples))
    evidence_rows = evidence.to(device).expand(num_samples, -1) if evidence is not None else None
    sampling = Sampling(temperature, top_k, top_p)
    generated = torch.zeros(num_samples, 0, dtype=torch.long, device=device)
    logprobs = torch.zeros(num_samples, 0, device=device)
    ends = [max_new_tokens] * num_samples
    tail = 4 * len(stop.encode()) + 4 if stop else 0
    model.eval()
    decoder = Decoder(model, num_samples, use_cache=use_cache, evidence=evidence_rows, media=rows_media)
    logits = decoder.start(rows, [ids] * num_samples) if max_new_tokens else None
    for step in range(max_new_tokens):
        assert logits is not None
        nxt = choose(logits, sampling, gen)
        logprobs = torch.cat([logprobs, torch.log_softmax(logits, dim=-1).gather(1, nxt)], dim=1)
        generated = torch.cat([generated, nxt], dim=1)
        if stop:
            for row in rows:
                if ends[row] == max_new_tokens and stop in tokenizer.decode(generated[row, -tail:].tolist()):
                    ends[row] = step + 1
            if all(end < max_new_tokens for end in ends):
                break
        if step + 1 < max_new_tokens:
            logits = decoder.step(rows, nxt[:, 0].tolist())
    completions = []
    for row in rows:
        text = tokenizer.decode(generated[row, :ends[row]].tolist())
        if stop and stop in text:
            text = text[:text.index(stop)]
        n = ends[row] if ends[row] < max_new_tokens else logprobs.size(1)
        completions.append(Completion(text, logprobs[row, :n].mean().item() if n else 0.0, n))
    return completions


class Sequence:
    """One continuation being generated by a :class:`Batcher`: its settings, tokens and text so far."""

    def __init__(self, ids: list[int], *, max_new_tokens: int, sampling: Sampling, seed: int,
                 stop: list[str] | None = None, device: str = "cpu", evidence: torch.Tensor | None = None) -> None:
        self.ids = ids or [0]
        #: (C,) or (1, C): retrieved evidence every step is conditioned on (see :func:`evidence_vector`).
        self.evidence = evidence.reshape(-1) if evidence is not None else None
        self.max_new_tokens = max_new_tokens
        self.sampling = sampling
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.stop = [s for s in stop or [] if s]
        self.tokens: list[int] = []
        self.logprobs: list[float] = []
        self.text = ""
        #: "stop" (a stop string, or the batch was cancelled), "length" (max_new_tokens), or None while running.
        self.finish_reason: str | None = None
        self.slot: int | None = None
        self._sent = 0

    def completion(self) -> Completion:
        n = len(self.tokens)
        return Completion(self.text, torch.tensor(self.logprobs).mean().item() if n else 0.0, n)

    def take_text(self) -> str:
        """Text not yet taken, holding back what may still turn into a stop string or an incomplete character."""
        visible = len(self.text)
        if self.finish_reason is None:
            held = max((k for s in self.stop for k in range(1, len(s)) if self.text.endswith(s[:k])), default=0)
            visible -= held
            while visible > self._sent and self.text[visible - 1] == "\ufffd":
                visible -= 1
        new = self.text[self._sent:visible]
        self._sent = max(self._sent, visible)
        return new

    def _add(self, token: int, logprob: float, tokenizer: Tokenizer) -> None:
        self.tokens.append(token)
        self.logprobs.append(logprob)
        text = tokenizer.decode(self.tokens)
        cut = min((text.index(s) for s in self.stop if s in text), default=None)
        if cut is not None:
            self.text, self.finish_reason = text[:cut], "stop"
        else:
            self.text = text
            if len(self.tokens) >= self.max_new_tokens:
                self.finish_reason = "length"


class Batcher:
    """Continuous batching: sequences take free rows of one :class:`Decoder`, join at the next step and
    leave when done. Each sequence has its own generator and settings, so its tokens are those it
    would get decoded alone (greedy: identical; sampled: the same draws)."""

    def __init__(self, model: LanguageModel, tokenizer: Tokenizer, slots: int, *, use_cache: bool = True) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.decoder = Decoder(model, slots, use_cache=use_cache)
        self.free = list(range(slots - 1, -1, -1))
        self.active: dict[int, Sequence] = {}
        self._logits: dict[int, torch.Tensor] = {}

    @torch.no_grad()
    def admit(self, sequences: list[Sequence]) -> list[Sequence]:
        """Encode as many of ``sequences`` as there are free rows (one call); those admitted, in order."""
        taken = sequences[:len(self.free)]
        for seq in taken:
            seq.slot = self.free.pop()
            if seq.max_new_tokens <= 0:
                seq.finish_reason = "length"
        started = [seq for seq in taken if seq.finish_reason is None]
        if started:
            rows = [cast(int, seq.slot) for seq in started]
            logits = self.decoder.start(rows, [seq.ids for seq in started], [seq.evidence for seq in started])
            for seq, row_logits in zip(started, logits, strict=True):
                self.active[cast(int, seq.slot)] = seq
                self._logits[cast(int, seq.slot)] = row_logits
        for seq in taken:
            if seq.finish_reason is not None:
                self.release(seq)
        return taken

    @torch.no_grad()
    def step(self) -> list[Sequence]:
        """Give every active sequence one more token; those that got one (finished ones have left)."""
        if not self.active:
            return []
        rows = sorted(self.active)
        picked = []
        for row in rows:
            seq, logits = self.active[row], self._logits[row][None]  # (1, V)
            token = choose(logits, seq.sampling, seq.generator)
            picked.append(int(token))
            seq._add(int(token), float(torch.log_softmax(logits, dim=-1)[0, int(token)]), self.tokenizer)
        going = [(row, token) for row, token in zip(rows, picked, strict=True)
                 if self.active[row].finish_reason is None]
        touched = [self.active[row] for row in rows]
        for seq in touched:
            if seq.finish_reason is not None:
                self.release(seq)
        if going:
            logits = self.decoder.step([row for row, _ in going], [token for _, token in going])
            for (row, _), row_logits in zip(going, logits, strict=True):
                self._logits[row] = row_logits
        return touched

    def release(self, seq: Sequence) -> None:
        """Free the sequence's row (finished or abandoned); it takes no more steps."""
        if seq.slot is None:
            return
        self.active.pop(seq.slot, None)
        self._logits.pop(seq.slot, None)
        self.free.append(seq.slot)
        seq.slot = None
        if seq.finish_reason is None:
            seq.finish_reason = "stop"


@torch.no_grad()
def sample_many(model: LanguageModel, tokenizer: Tokenizer, prompts: list[str], *, batch_size: int = 8,
                max_new_tokens: int = 200, temperature: float = 0.8, top_k: int | None = 200, top_p: float = 1.0,
                seed: int = 1337, stop: str | None = None, use_cache: bool = True,
                device: str = "cpu") -> list[Completion]:
    """One continuation per prompt, up to ``batch_size`` decoded together; prompt i's equals
    ``sample(prompt_i, seed=seed)`` alone, so batching is only a matter of speed."""
    sampling = Sampling(temperature, top_k, top_p)
    return decode([Sequence(tokenizer.encode(p), max_new_tokens=max_new_tokens, sampling=sampling, seed=seed,
                            stop=[stop] if stop else None, device=device) for p in prompts],
                  model, tokenizer, rows=batch_size, use_cache=use_cache)


@torch.no_grad()
def decode(sequences: list[Sequence], model: LanguageModel, tokenizer: Tokenizer, *, rows: int,
           use_cache: bool = True) -> list[Completion]:
    """Run ``sequences`` to the end, up to ``rows`` at a time; their completions, in order."""
    waiting = list(sequences)
    batcher = Batcher(model, tokenizer, max(1, min(rows, len(sequences))), use_cache=use_cache)
    while waiting or batcher.active:
        waiting = waiting[len(batcher.admit(waiting)):]
        batcher.step()
    return [seq.completion() for seq in sequences]


@torch.no_grad()
def next_token_probs(model: LanguageModel, tokenizer: Tokenizer, prompt: str, *, device: str = "cpu") -> list[float]:
    """The model's distribution over the token after ``prompt`` (temperature 1); its entropy says how unsure it is."""
    ids = (tokenizer.encode(prompt) or [0])[-model.dims.block_size:]
    model.eval()
    logits = model(torch.tensor([ids], device=device)).logits[0, -1].float()
    return torch.softmax(logits, dim=-1).tolist()


@torch.no_grad()
def evidence_vector(model: LanguageModel, tokenizer: Tokenizer, texts: list[str], *,
                    device: str = "cpu") -> torch.Tensor | None:
    """Mean final hidden state of the model over ``texts``, (1, d_model): what an aligner mixes in.

    None when the model has no aligner to take it, so callers need not ask first.
    """
    if _aligner(model) is None or not texts:
        return None
    block = model.dims.block_size
    model.eval()
    states = [model(torch.tensor([ids[:block]], device=device)).hidden.mean(dim=1)
              for ids in (tokenizer.encode(t) for t in texts) if ids]
    return torch.cat(states).mean(dim=0, keepdim=True) if states else None


def _aligner(model: LanguageModel) -> EvidenceAligner | None:
    aligner = model.extras["align"] if "align" in model.extras else None
    return aligner if isinstance(aligner, EvidenceAligner) else None


@torch.no_grad()
def evaluate_tokens(model: LanguageModel, tokens: np.ndarray, *, batch_size: int = 32,
                    device: str = "cpu") -> tuple[float, int]:
    """Mean next-token loss over every token of ``tokens`` (non-overlapping windows); (loss, count)."""
    block = model.dims.block_size
    windows = list(sequential_windows(tokens, block))
    full = [start for start, length in windows if length == block]
    total, count = 0.0, 0
    model.eval()
    for i in range(0, len(full), batch_size):
        x, y = window_batch(tokens, full[i:i + batch_size], block)
        logits = model(x.to(device)).logits.float()
        total += F.cross_entropy(logits.flatten(0, 1), y.to(device).flatten(), reduction="sum").item()
        count += y.numel()
    for start, length in windows:
        if length < block:
            x, y = window_batch(tokens, [start], length)
            logits = model(x.to(device)).logits.float()
            total += F.cross_entropy(logits.flatten(0, 1), y.to(device).flatten(), reduction="sum").item()
            count += length
    return total / max(1, count), count
