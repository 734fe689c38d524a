"""Self-consistency voting, the same for ``apt generate --vote`` and ``apt serve --vote``.

A voter provider (``voter.*``, from its own package) decides among K sampled answers; this module
reads its settings (the checkpoint profile's ``providers.voter.<name>`` overridden by ``--vote``),
decides whether a prompt is uncertain enough to vote on, builds the K candidate sequences and runs
the voter's data hook (in apt-sandbox when asked or when its package requires it).

Candidate ``j`` is sampled with seed ``seed + j`` on its own generator, so the K answers are the
same whether they are decoded together by ``apt generate`` or join a running batch of ``apt serve``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from apt.config import parse_assignments
from apt.errors import ConfigError
from apt.generate import Completion, Sampling, Sequence
from apt.providers import VoterProvider
from apt.registry import DEFAULTS, default_registry

if TYPE_CHECKING:
    import torch

    from apt.profile import Profile


class Vote:
    """A configured voter and the entropy threshold that gates it."""

    def __init__(self, spec: str, profile: Profile, schedule: dict[str, Any], *, threshold: float | None = None,
                 sandboxed: bool = False) -> None:
        self.name = DEFAULTS["voter"]
        items = [part.strip() for part in spec.split(",") if part.strip()]
        options = {**profile.provider_options("voter", self.name), **parse_assignments(items, "--vote", "k=5")}
        try:
            provider = default_registry().make("voter", self.name, options)
        except ConfigError as err:
            raise err.located(f"--vote (with the checkpoint profile's providers.voter.{self.name})") from None
        assert isinstance(provider, VoterProvider)
        self.provider = provider
        self.voter = self.provider.build()
        self.sandboxed = sandboxed
        #: Where the threshold came from, for the line that reports it.
        self.source = "--vote-threshold"
        if threshold is None and "vote_threshold" in schedule:
            threshold, self.source = schedule["vote_threshold"], "the checkpoint's vote_threshold schedule"
        if threshold is None:
            threshold, self.source = self.voter.threshold, f"the voter's config (providers.voter.{self.name})"
        #: Vote only when the next-token entropy exceeds this many nats; None: always vote.
        self.threshold: float | None = threshold

    @property
    def samples(self) -> int:
        return int(self.voter.samples)

    @property
    def temperature(self) -> float:
        return float(self.voter.temperature)

    @property
    def in_sandbox(self) -> bool:
        return self.sandboxed or self.provider.sandbox == "required"

    def wanted(self, probs: list[float]) -> tuple[bool, float]:
        """Whether the next-token distribution after the prompt is uncertain enough to vote, and its entropy."""
        return bool(self.voter.should_vote(probs, self.threshold)), float(self.voter.entropy(probs))

    def sequences(self, ids: list[int], *, max_new_tokens: int, top_k: int | None, seed: int, top_p: float = 1.0,
                  stop: list[str] | None = None, evidence: torch.Tensor | None = None,
                  device: str = "cpu") -> list[Sequence]:
        """The K candidates to decode, each on its own generator (seed ``seed + j``)."""
        sampling = Sampling(self.temperature, top_k, top_p)
        return [Sequence(ids, max_new_tokens=max_new_tokens, sampling=sampling, seed=seed + j, stop=stop,
                         device=device, evidence=evidence) for j in range(self.samples)]

    def decide(self, completions: list[Completion]) -> Decision:
        """The voter's verdict on the candidates."""
        from apt.isolation import call_data_hook

        request = self.voter.request([c.text for c in completions], [c.mean_logprob for c in completions])
        result = call_data_hook(self.provider, self.provider.vote_hook, request, sandboxed=self.sandboxed)
        settings = {k: v for k, v in request.items() if k not in ("candidates", "logprobs")}
        return Decision(str(result["winner"]), {**result, **settings, "candidates": request["candidates"]}, settings)

    def describe(self, decision: Decision) -> list[str]:
        """Two lines for a terminal: how the vote ran, and who won by how much."""
        report = decision.report
        counts = ", ".join(f"{key!r} x{n}" for key, n in sorted(report["counts"].items(), key=lambda kv: -kv[1]))
        where = " in the sandbox" if self.in_sandbox else ""
        shown = "".join(f", {k}={v}" for k, v in decision.settings.items())
        tie = ", tie broken by mean log-probability" if report["tie_broken_by_logprob"] else ""
        return [f"vote{where}: {self.samples} samples at temperature {self.temperature:g}{shown}: {counts}",
                f"winner {report['normalised']!r}: {report['counts'][report['normalised']]} of {report['votes']} "
                f"agree (agreement {report['agreement']:.2f}){tie}"]


@dataclass
class Decision:
    winner: str
    #: The voter's result (winner, normalised, counts, votes, agreement, ...), its settings and the candidates.
    report: dict[str, Any]
    settings: dict[str, Any]
