"""Key/value caches for incremental decoding (:class:`apt.providers.SupportsKVCache`).

A cache holds, for every layer, the keys and values of ``batch`` rows at their *positions*:
index t of a row is the token at position t, so a row never needs shifting and rows of
different lengths share one tensor. Each call of :meth:`LanguageModel.forward_cached` names the
rows it feeds and the position each starts at; a query at position p then sees keys 0..p of its
own row, which is the causal mask of the full forward. Slots past a row's length may hold stale
keys (right padding of a prefill, a row restarted shorter): the mask never reaches them, and the
next token at that position overwrites them.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


class CachedKV(NamedTuple):
    """Everything a query of the current call may attend to, for the rows of the call."""

    keys: torch.Tensor  # (R, H, S, Dk)
    values: torch.Tensor  # (R, H, S, Dv)
    #: (R, 1, T, S) bool, True where a query may look; None when every key is visible (or ``is_causal``).
    mask: torch.Tensor | None
    #: The call starts every row at position 0, so the plain causal mask applies (S == T).
    is_causal: bool


class LayerCache:
    """One layer's keys and values; the attention module of that layer writes and reads it."""

    def __init__(self, batch: int, capacity: int) -> None:
        self.batch = batch
        self.capacity = capacity
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None
        self._call: _Call | None = None

    def append(self, k: torch.Tensor, v: torch.Tensor) -> CachedKV:
        """Store the new keys and values (R, H, T, D) at the call's positions; return all the rows can see."""
        call = self._call
        if call is None:
            raise RuntimeError("LayerCache.append outside LanguageModel.forward_cached")
        if self.keys is None or self.values is None:
            # Providers choose their key and value widths (tva stores rank-r veins), so allocate on first use.
            self.keys = k.new_zeros(self.batch, k.shape[1], self.capacity, k.shape[3])
            self.values = v.new_zeros(self.batch, v.shape[1], self.capacity, v.shape[3])
        T, S = k.shape[2], call.span
        if call.rows is None and call.uniform is not None:
            s = call.uniform
            self.keys[:, :, s:s + T] = k
            self.values[:, :, s:s + T] = v
            keys, values = self.keys[:, :, :S], self.values[:, :, :S]
        else:
            rows = call.row_index
            self.keys[rows[:, None], :, call.positions] = k.transpose(1, 2)
            self.values[rows[:, None], :, call.positions] = v.transpose(1, 2)
            keys, values = self.keys[rows, :, :S], self.values[rows, :, :S]
        return CachedKV(keys, values, call.mask, call.is_causal)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float | None = None) -> torch.Tensor:
        """``scaled_dot_product_attention`` of the new queries (R, H, T, Dk) over the cached keys: (R, H, T, Dv)."""
        kv = self.append(k, v)
        return F.scaled_dot_product_attention(q, kv.keys, kv.values, attn_mask=kv.mask, is_causal=kv.is_causal,
                                              scale=scale)


class KVCache:
    """The caches of every layer of a model, for ``batch`` rows of up to ``capacity`` positions."""

    def __init__(self, n_layer: int, batch: int, capacity: int) -> None:
        self.batch = batch
        self.capacity = capacity
        self.layers = [LayerCache(batch, capacity) for _ in range(n_layer)]

    def prepare(self, rows: list[int] | None, starts: list[int], length: int, device: torch.device) -> torch.Tensor:
        """Set up a call feeding ``length`` new tokens to ``rows`` (None: all) from ``starts``; their positions (R, T)."""
        count = self.batch if rows is None else len(rows)
        if len(starts) != count:
            raise ValueError(f"{len(starts)} start positions for {count} rows")
        if min(starts) < 0 or max(starts) + length > self.capacity:
            raise ValueError(f"positions {min(starts)}..{max(starts) + length - 1} outside the cache's "
                             f"{self.capacity} positions")
        first = torch.tensor(starts, device=device)
        positions = first[:, None] + torch.arange(length, device=device)  # (R, T)
        uniform = starts[0] if all(s == starts[0] for s in starts) else None
        span = max(starts) + length
        is_causal = uniform == 0 and length > 1
        mask = None
        if uniform is None or (uniform > 0 and length > 1):
            mask = (torch.arange(span, device=device) <= positions[:, :, None]).unsqueeze(1)  # (R, 1, T, S)
        row_index = torch.arange(count, device=device) if rows is None else torch.tensor(rows, device=device)
        call = _Call(rows, row_index, positions, uniform, span, mask, is_causal)
        for layer in self.layers:
            layer._call = call
        return positions


class _Call(NamedTuple):
    rows: list[int] | None
    row_index: torch.Tensor
    positions: torch.Tensor
    uniform: int | None
    span: int
    mask: torch.Tensor | None
    is_causal: bool
