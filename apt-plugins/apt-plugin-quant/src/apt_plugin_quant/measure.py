"""What quantisation changes: saved size, generation speed (interleaved), held-out loss."""

from __future__ import annotations

import io
import math
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from apt.generate import evaluate_tokens, sample


def saved_bytes(state: dict[str, Any]) -> int:
    """Size of ``torch.save(state)`` (what a checkpoint file holding ``state`` takes on disk)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getbuffer().nbytes


def interleave(variants: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Call each variant once per round, in rotating order (A B, B A, ...); each call returns one sample."""
    samples: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            samples[name].append(variants[name]())
    return samples


def generation_speed(models: dict[str, torch.nn.Module], tokenizer: Any, *, prompt: str, tokens: int,
                     rounds: int, device: str = "cpu") -> dict[str, Any]:
    """Tokens/s of ``apt.generate.sample`` per model: one warm-up each, then ``rounds`` interleaved samples.

    Returns the median tokens/s of each model, every sample, and the median over rounds of each
    model's tokens/s divided by the first model's (the paired ratio, robust to a noisy neighbour).
    """
    def runner(model: torch.nn.Module) -> Callable[[], float]:
        def once() -> float:
            start = time.perf_counter()
            sample(model, tokenizer, prompt, max_new_tokens=tokens, temperature=0.8, top_k=200, seed=1337,
                   device=device)
            return tokens / (time.perf_counter() - start)
        return once

    runners = {name: runner(model) for name, model in models.items()}
    for once in runners.values():
        once()
    samples = interleave(runners, rounds)
    base = next(iter(models))
    return {
        "tokens": tokens, "rounds": rounds, "prompt": prompt,
        "median_tokens_per_s": {name: statistics.median(s) for name, s in samples.items()},
        "ratio_vs_" + base: {name: statistics.median(a / b for a, b in zip(s, samples[base], strict=True))
                             for name, s in samples.items() if name != base},
        "samples_tokens_per_s": samples,
    }


def held_out_loss(model: torch.nn.Module, ids: np.ndarray, device: str = "cpu") -> dict[str, float]:
    loss, count = evaluate_tokens(model, ids, device=device)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": count}
