"""Comparing speeds on a shared machine: interleaved rounds and medians of paired ratios.

A neighbour can slow a 2-thread step 2.7x, so variants are measured in one process, in rotating
order (A B, B A, ...), and compared round by round; absolute numbers from separate runs are not.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable


def interleave(variants: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Call each variant once per round, in rotating order; each call returns one measurement."""
    samples: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            samples[name].append(variants[name]())
    return samples


def paired_ratio(samples: dict[str, list[float]], num: str, den: str) -> float:
    """Median over rounds of ``samples[num][i] / samples[den][i]``."""
    return statistics.median(a / b for a, b in zip(samples[num], samples[den], strict=True))
