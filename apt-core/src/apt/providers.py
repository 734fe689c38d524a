"""Provider interfaces: the seven kinds of part a model or a generation run is assembled from.

A provider is a small class registered under the entry-point group ``apt.providers`` as
``"<kind>.<name>" = "module:Class"``. It declares ``kind``, ``name`` and a ``Config``
dataclass (every field has a default, bounds in :func:`apt.config.option`) and builds the
heavy object on demand.

Contract that keeps discovery cheap: a provider's module must not import torch (or any other
heavy library) at import time; ``build`` imports what it needs. ``apt plugin list`` imports
provider classes to validate them and must still start in a fraction of a second.

A provider *instance* may also implement ``apt_*`` hooks (see :mod:`apt.hookspecs`); the model
builder registers it with the plugin manager once, under the name ``"<kind>.<name>"``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

if TYPE_CHECKING:
    from torch import nn

KINDS = ("attention", "ffn", "router", "align", "retriever", "voter", "quant")


@dataclass(frozen=True)
class ModelDims:
    """Shape of the model a provider builds a part for."""

    n_layer: int
    n_head: int
    d_model: int
    block_size: int
    vocab_size: int
    dropout: float = 0.0
    bias: bool = False

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_head


@dataclass(frozen=True)
class EmptyConfig:
    """Config of a provider without options."""


class Provider(ABC):
    kind: ClassVar[str]
    name: ClassVar[str]
    Config: ClassVar[type] = EmptyConfig
    #: Curriculum key: ``schedules.enable_<switch>_at_epoch`` turns this provider's modules on.
    switch: ClassVar[str | None] = None
    #: The package manifest's ``[tool.apt] sandbox``: "required" runs its data hooks in apt-sandbox.
    sandbox: ClassVar[str] = "allowed"

    def __init__(self, config: Any) -> None:
        self.config = config

    def check(self, dims: ModelDims) -> None:
        """Validate the config against the model's shape; raise :class:`apt.errors.ConfigError`."""


class AttentionProvider(Provider):
    """Causal self-attention: ``module(x: (B, T, C)) -> (B, T, C)``."""

    kind = "attention"

    @abstractmethod
    def build(self, dims: ModelDims, layer: int) -> nn.Module:
        ...


class FFNProvider(Provider):
    """Position-wise feed-forward block: ``module(x: (B, T, C)) -> (B, T, C)``."""

    kind = "ffn"

    @abstractmethod
    def build(self, dims: ModelDims, layer: int) -> nn.Module:
        ...


class RouterProvider(Provider):
    """Mixture of experts around the FFN; ``make_ffn()`` builds one independently initialised expert."""

    kind = "router"

    @abstractmethod
    def build(self, dims: ModelDims, layer: int, make_ffn: Callable[[], nn.Module]) -> nn.Module:
        ...


class AlignProvider(Provider):
    """Model-level alignment objective; contributes through ``apt_extra_losses``."""

    kind = "align"

    @abstractmethod
    def build(self, dims: ModelDims) -> nn.Module:
        ...


@dataclass(frozen=True)
class Document:
    """A text to index; ``source`` is what a user sees to find it again (file:line, JSONL id)."""

    text: str
    source: str


@dataclass(frozen=True)
class Passage:
    """A retrieved document with its score (higher is better), as shown and as put in the prompt."""

    text: str
    source: str
    score: float


class SearchIndex(Protocol):
    def search(self, query: str, k: int) -> list[Passage]:
        """The ``k`` best passages for ``query``, best first."""


class Retriever(Protocol):
    """What :meth:`RetrieverProvider.build` returns; it holds any model the retriever needs."""

    def build_index(self, documents: Iterable[Document], out: Path) -> dict[str, Any]:
        """Index ``documents`` into the file ``out`` (written atomically); return its metadata."""

    def open(self, path: Path) -> SearchIndex:
        """Load an index; raise :class:`apt.errors.AptError` if missing or built another way."""

    def augment(self, prompt: str, passages: list[Passage]) -> str:
        """The prompt the model is conditioned on (the provider's configurable template)."""


class RetrieverProvider(Provider):
    """Document index used to augment prompts at generation time."""

    kind = "retriever"

    @abstractmethod
    def build(self) -> Retriever:
        ...


class Voter(Protocol):
    """What :meth:`VoterProvider.build` returns: the decision whether to vote at all."""

    def entropy(self, probs: list[float]) -> float:
        """Entropy in nats of a next-token distribution."""

    def should_vote(self, probs: list[float], threshold: float | None = None) -> bool:
        """Whether the model is unsure enough (entropy above ``threshold``) to be worth K samples."""


class VoterProvider(Provider):
    """Chooses among sampled candidates (self-consistency).

    ``vote_hook`` names the pure data hook ``"module:function"``: it takes
    ``{"candidates": [...], "logprobs": [...], "normalise": ...}`` and returns the vote as JSON
    (``winner``, ``normalised``, ``agreement``, ``votes``, ``counts``, ``tie_broken_by_logprob``),
    so the kernel can run it in a sandbox (:mod:`apt.isolation`).
    """

    kind = "voter"
    vote_hook: ClassVar[str]

    @abstractmethod
    def build(self) -> Voter:
        ...


class QuantProvider(Provider):
    """Rewrites a trained model for cheaper inference."""

    kind = "quant"

    @abstractmethod
    def apply(self, model: nn.Module) -> nn.Module:
        ...


BASES: dict[str, type[Provider]] = {
    cls.kind: cls
    for cls in (AttentionProvider, FFNProvider, RouterProvider, AlignProvider,
                RetrieverProvider, VoterProvider, QuantProvider)
}
