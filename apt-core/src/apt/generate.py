"""Sampling text from a trained model."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from apt.data import sequential_windows, window_batch
from apt.tokenizers import Tokenizer


@torch.no_grad()
def sample(model: torch.nn.Module, tokenizer: Tokenizer, prompt: str, *, max_new_tokens: int = 200,
           temperature: float = 0.8, top_k: int | None = 200, seed: int = 1337, device: str = "cpu") -> str:
    """Autoregressive sampling; the context is cropped to the model's block size as it grows.

    ``temperature`` 0 means greedy decoding.
    """
    gen = torch.Generator(device=device).manual_seed(seed)
    ids = tokenizer.encode(prompt) or [0]
    idx = torch.tensor([ids], dtype=torch.long, device=device)
    block = model.dims.block_size
    model.eval()
    for _ in range(max_new_tokens):
        logits = model(idx[:, -block:]).logits[:, -1, :].float()
        if temperature <= 0:
            nxt = logits.argmax(dim=-1, keepdim=True)
        else:
            logits = logits / temperature
            if top_k is not None and top_k < logits.size(-1):
                kth = torch.topk(logits, top_k).values[:, [-1]]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            nxt = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=gen)
        idx = torch.cat([idx, nxt], dim=1)
    return tokenizer.decode(idx[0, len(ids):].tolist())


@torch.no_grad()
def evaluate_tokens(model: torch.nn.Module, tokens: np.ndarray, *, batch_size: int = 32,
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
