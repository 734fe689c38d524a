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

from apt import LanguageModel, evaluate_tokens, interleave, paired_ratio, sample


def saved_bytes(state: dict[str, Any]) -> int:
    """Size of ``torch.save(state)`` (what a checkpoint file holding ``state`` takes on disk)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getbuffer().nbytes


def generation_speed(models: dict[str, LanguageModel], tokenizer: Any, *, prompt: str, tokens: int,
                     rounds: int, device: str = "cpu") -> dict[str, Any]:
    """Tokens/s of ``apt.generate.sample`` per model: one warm-up each, then ``rounds`` interleaved samples.

    Returns the median tokens/s of each model, every sample, and the median over rounds of each
    model's tokens/s divided by the first model's (the paired ratio, robust to a noisy neighbour).
    """
    def runner(model: LanguageModel) -> Callable[[], float]:
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
        "ratio_vs_" + base: {name: paired_ratio(samples, name, base) for name in samples if name != base},
        "samples_tokens_per_s": samples,
    }


def held_out_loss(model: LanguageModel, ids: np.ndarray, device: str = "cpu") -> dict[str, float]:
    loss, count = evaluate_tokens(model, ids, device=device)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": count}
