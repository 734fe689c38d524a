"""The ``voter.self_consistency`` provider (no torch: voting is pure data)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from apt import VoterProvider, option


@dataclass(frozen=True)
class SelfConsistencyConfig:
    k: int = option(5, ge=1, doc="samples drawn per question")
    temperature: float = option(0.8, gt=0, doc="sampling temperature of the K candidates")
    normalise: Literal["exact", "whitespace", "numeric"] = option("whitespace", doc="what makes two answers agree")
    vote_threshold: float | None = option(None, ge=0, doc="vote only when next-token entropy (nats) exceeds this; "
                                                          "schedule key vote_threshold")


class SelfConsistencyVoter:
    def __init__(self, config: SelfConsistencyConfig) -> None:
        self.config = config
        self.samples = config.k
        self.temperature = config.temperature
        self.threshold = config.vote_threshold

    def request(self, candidates: list[str], logprobs: list[float]) -> dict[str, Any]:
        return {"candidates": candidates, "logprobs": logprobs, "normalise": self.config.normalise}

    def vote(self, candidates: list[str], logprobs: list[float] | None = None):
        from apt_plugin_voter.voting import vote

        return vote(candidates, logprobs, self.config.normalise)

    def entropy(self, probs: list[float]) -> float:
        from apt_plugin_voter.voting import entropy

        return entropy(probs)

    def should_vote(self, probs: list[float], threshold: float | None = None) -> bool:
        from apt_plugin_voter.voting import should_vote

        return should_vote(probs, self.config.vote_threshold if threshold is None else threshold)


class SelfConsistencyProvider(VoterProvider):
    """Sample K answers, vote over normalised forms, break ties by mean log-probability."""

    name = "self_consistency"
    Config = SelfConsistencyConfig
    vote_hook = "apt_plugin_voter.voting:vote"

    def build(self) -> SelfConsistencyVoter:
        return SelfConsistencyVoter(self.config)

    def self_test(self) -> str:
        result = self.build().vote(["42", " 42 ", "41"], [-1.0, -2.0, -0.5])
        if self.config.normalise != "exact" and result.normalised != "42":
            raise AssertionError(f"majority of ['42', ' 42 ', '41'] came out as {result.normalised!r}")
        return "self_consistency: voting ok"
