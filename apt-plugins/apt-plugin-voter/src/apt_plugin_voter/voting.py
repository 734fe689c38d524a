"""Voting over sampled answers: pure data in, pure data out (so it runs as well in a sandbox).

Candidates are grouped by a normalised form; the largest group wins; a tie is broken by the
higher mean log-probability of the tied groups' samples, then by first appearance. The
agreement ratio (winner's share of the votes) says how much the samples agree.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

Normaliser = Literal["exact", "whitespace", "numeric"]

_NUMBER = re.compile(r"[-+]?(?:\d[\d,]*(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")


def normalise(text: str, how: Normaliser = "exact") -> str:
    """The form two answers must share to count as the same vote.

    ``whitespace``: case-folded, runs of whitespace collapsed, ends stripped; ``numeric``: the last
    number in the text, canonicalised (``"1,000.50"`` and ``"1000.5"`` agree); text without a number
    falls back to the whitespace form.
    """
    if how == "exact":
        return text
    folded = " ".join(text.split()).casefold()
    if how == "whitespace":
        return folded
    numbers = _NUMBER.findall(text)
    if not numbers:
        return folded
    value = float(numbers[-1].replace(",", ""))
    return str(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)


@dataclass(frozen=True)
class VoteResult:
    winner: str
    normalised: str
    agreement: float
    votes: int
    counts: dict[str, int]
    tie_broken_by_logprob: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def vote(candidates: Sequence[str] | Mapping[str, Any], logprobs: Sequence[float] | None = None,
         how: Normaliser = "exact") -> VoteResult | dict[str, Any]:
    """Majority vote over ``candidates`` (``logprobs``: mean token log-probability of each sample).

    Called with a mapping (``{"candidates": [...], "logprobs": [...], "normalise": "numeric"}``, the
    JSON request form a sandbox passes), it returns the JSON form of the result.
    """
    if isinstance(candidates, Mapping):
        request = candidates
        return _vote(list(request["candidates"]), request.get("logprobs"), request.get("normalise", "exact")).to_dict()
    return _vote(list(candidates), logprobs, how)


def _vote(candidates: list[str], logprobs: Sequence[float] | None, how: Normaliser) -> VoteResult:
    if not candidates:
        raise ValueError("vote needs at least one candidate")
    if logprobs is not None and len(logprobs) != len(candidates):
        raise ValueError(f"got {len(logprobs)} log-probabilities for {len(candidates)} candidates")
    groups: dict[str, list[int]] = {}
    for i, text in enumerate(candidates):
        groups.setdefault(normalise(text, how), []).append(i)
    top = max(len(members) for members in groups.values())
    tied = [key for key, members in groups.items() if len(members) == top]
    scores = logprobs if len(tied) > 1 else None
    broken = scores is not None
    if scores is not None:
        winner_key = max(tied, key=lambda key: sum(scores[i] for i in groups[key]) / len(groups[key]))
    else:
        winner_key = tied[0]
    members = groups[winner_key]
    best = max(members, key=lambda i: logprobs[i]) if logprobs is not None else members[0]
    return VoteResult(candidates[best], winner_key, top / len(candidates), len(candidates),
                      {key: len(m) for key, m in groups.items()}, broken)


def entropy(probs: Sequence[float]) -> float:
    """Shannon entropy in nats of a next-token distribution."""
    return -sum(p * math.log(p) for p in probs if p > 0)


def should_vote(probs: Sequence[float], threshold: float | None) -> bool:
    """Vote only when the model is unsure: next-token entropy above ``threshold`` nats (None: always)."""
    return threshold is None or entropy(probs) > threshold
