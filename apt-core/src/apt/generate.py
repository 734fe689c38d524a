"""Sampling text from a trained model."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from apt.data import sequential_windows, window_batch
from apt.model import LanguageModel
from apt.providers import EvidenceAligner
from apt.tokenizers import Tokenizer


class Completion(NamedTuple):
    text: str
    #: Mean log-probability of the generated tokens under the model (temperature 1), for ranking.
    mean_logprob: float
    tokens: int


@torch.no_grad()
def sample(model: LanguageModel, tokenizer: Tokenizer, prompt: str, *, max_new_tokens: int = 200,
           temperature: float = 0.8, top_k: int | None = 200, seed: int = 1337, device: str = "cpu",
           num_samples: int = 1, stop: str | None = None, evidence: torch.Tensor | None = None) -> list[Completion]:
    """Autoregressive sampling of ``num_samples`` continuations in one batch.

    The context is cropped to the model's block size as it grows; ``temperature`` 0 decodes
    greedily. A continuation ends before the first ``stop`` string. ``evidence`` (1, d_model)
    conditions every step through the model's aligner (``align.bistate``'s evidence view), the
    path retrieval uses to reach the hidden states as well as the prompt.
    """
    gen = torch.Generator(device=device).manual_seed(seed)
    ids = tokenizer.encode(prompt) or [0]
    idx = torch.tensor([ids] * num_samples, dtype=torch.long, device=device)
    block = model.dims.block_size
    aligner = _aligner(model) if evidence is not None else None
    evidence_rows = evidence.to(device).expand(num_samples, -1) if evidence is not None else None
    logprobs = torch.zeros(num_samples, 0, device=device)
    ends = [max_new_tokens] * num_samples
    tail = 4 * len(stop.encode()) + 4 if stop else 0
    model.eval()
    for step in range(max_new_tokens):
        out = model(idx[:, -block:])
        if aligner is not None and evidence_rows is not None:
            out = aligner.evidence_view(out.hidden, evidence_rows, model.lm_head)
        logits = out.logits[:, -1, :].float()
        if temperature <= 0:
            nxt = logits.argmax(dim=-1, keepdim=True)
        else:
            scaled = logits / temperature
            if top_k is not None and top_k < scaled.size(-1):
                kth = torch.topk(scaled, top_k).values[:, [-1]]
                scaled = scaled.masked_fill(scaled < kth, float("-inf"))
            nxt = torch.multinomial(torch.softmax(scaled, dim=-1), 1, generator=gen)
        logprobs = torch.cat([logprobs, torch.log_softmax(logits, dim=-1).gather(1, nxt)], dim=1)
        idx = torch.cat([idx, nxt], dim=1)
        if stop:
            for row in range(num_samples):
                if ends[row] == max_new_tokens and stop in tokenizer.decode(idx[row, len(ids):][-tail:].tolist()):
                    ends[row] = step + 1
            if all(end < max_new_tokens for end in ends):
                break
    completions = []
    for row in range(num_samples):
        text = tokenizer.decode(idx[row, len(ids):len(ids) + ends[row]].tolist())
        if stop and stop in text:
            text = text[:text.index(stop)]
        n = ends[row] if ends[row] < max_new_tokens else logprobs.size(1)
        completions.append(Completion(text, logprobs[row, :n].mean().item() if n else 0.0, n))
    return completions


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
