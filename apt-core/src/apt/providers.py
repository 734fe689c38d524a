"""The provider contract: the kinds of part a model or a generation run is assembled from.

A provider is a small class registered under the entry-point group ``apt.providers`` as
``"<kind>.<name>" = "module:Class"``. It declares ``kind``, ``name`` and a ``Config``
dataclass (every field has a default, bounds in :func:`apt.config.option`); the registry
builds the config once from the profile's ``providers.<kind>.<name>`` section and hands it to
the provider whole (``self.config``), and the provider builds the heavy object on demand.

Contract that keeps discovery cheap: a provider's module must not import torch (or any other
heavy library) at import time; ``build`` imports what it needs. ``apt plugin list`` imports
provider classes to validate them and must still start in a fraction of a second.

Optional behaviour is declared through the capability Protocols at the end of this module
(:class:`Switchable`, :class:`ResidualOutput`, :class:`SelfInitialised`,
:class:`HasInferenceForm`, :class:`SupportsKVCache`, :class:`EvidenceAligner`); the kernel checks for them with
``isinstance``, never by probing attribute names.

A provider *instance* may also implement ``apt_*`` hooks (see :mod:`apt.hookspecs`); the model
builder registers it with the plugin manager once, under the name ``"<kind>.<name>"``.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from apt.errors import ConfigError, ProviderError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from apt.batch import Media
    from apt.kvcache import LayerCache
    from apt.model import LanguageModel

#: Every provider kind, in the order listings show them.
KINDS = ("attention", "ffn", "router", "align", "encoder", "fusion", "retriever", "voter", "quant", "tokenizer")
#: The kinds a text model is assembled from (the profile's ``model.<kind>`` keys); encoders and
#: fusion join them when ``model.encoders`` is set; the rest serve generation.
MODEL_KINDS = ("attention", "ffn", "router", "align")
#: What ``model.encoders`` maps: the JSONL key a record's media file sits under.
MODALITIES = ("image", "audio")


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

    def check(self, dims: ModelDims) -> None:  # noqa: B027 (optional hook: most providers need no check)
        """Validate the config against the model's shape; raise :class:`apt.errors.ConfigError`.

        The key of the error is relative to this provider's config (``"r"``, not
        ``"providers.attention.tva.r"``): the builder prefixes it with the profile path.
        """

    def self_test(self) -> str | None:
        """A quick check that the provider works on this machine: raise on failure.

        Run inside apt-sandbox when a plugin is validated (install, publish). Returns a one-line
        summary, or None for a provider without a self-test.
        """
        return None


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


class EncoderProvider(Provider):
    """Turns one medium (an image, a clip of audio) into a sequence of feature vectors.

    Two halves: :meth:`load` decodes a file into the fixed-shape input tensor the module takes
    (resizing, resampling, normalising per the config), so data loading never needs the model;
    :meth:`build` makes the :class:`MediaEncoder` module. Weights published elsewhere (a Hugging
    Face vision tower, a Whisper encoder) come in through :meth:`load_pretrained`, which the
    builder calls only for a new run: a checkpoint's own weights replace them on resume.
    """

    kind = "encoder"
    #: The record key and ``model.encoders`` key this encoder serves (one of :data:`MODALITIES`).
    modality: ClassVar[str]

    @abstractmethod
    def tokens(self) -> int:
        """Feature vectors per item (the module's ``n_tokens``), known from the config alone."""

    @abstractmethod
    def load(self, path: Path) -> torch.Tensor:
        """One item decoded from ``path``, ready to stack into the module's input batch.

        Raises :class:`apt.errors.AptError` with a one-line reason (missing, unreadable, wrong
        format) that the data loader prefixes with the JSONL line.
        """

    @abstractmethod
    def build(self, dims: ModelDims) -> nn.Module:
        """A :class:`MediaEncoder`: ``module(inputs (M, *item_shape)) -> (M, n_tokens, d_out)``."""

    def load_pretrained(self, module: nn.Module) -> None:
        """Fill ``module`` with published weights when the config points at them; raise
        :class:`apt.errors.ConfigError` naming the config key when they do not fit."""


class FusionProvider(Provider):
    """How encoder features reach the language model (prefix tokens, cross-attention, ...).

    The text-only model never branches on a modality: given media it asks the fusion module to
    :meth:`Fusion.inject` features into the token embeddings and to act after each block
    (:meth:`Fusion.after_block`). The batch layout follows :meth:`slots`: a record with an image
    starts with ``slots("image", n)`` placeholder positions that ``inject`` fills.
    """

    kind = "fusion"

    @abstractmethod
    def slots(self, modality: str, n_tokens: int) -> int:
        """Token positions an item of ``modality`` with ``n_tokens`` features takes in its row."""

    @abstractmethod
    def build(self, dims: ModelDims, encoders: dict[str, tuple[int, int]]) -> nn.Module:
        """A :class:`Fusion` for encoders given as modality -> (n_tokens, d_out)."""


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


class TextEncoder(Protocol):
    """What a retriever may ask of the model's tokenizer to fit passages into its context."""

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; raises :class:`apt.errors.AptError` for text it cannot encode."""

    def encodable(self, text: str) -> str:
        """``text`` without the characters the tokenizer cannot encode."""


class Retriever(Protocol):
    """What :meth:`RetrieverProvider.build` returns; it holds any model the retriever needs."""

    def build_index(self, documents: Iterable[Document], out: Path) -> dict[str, Any]:
        """Index ``documents`` into the file ``out`` (written atomically); return its metadata."""

    def open(self, path: Path) -> SearchIndex:
        """Load an index; raise :class:`apt.errors.AptError` if missing or built another way."""

    def augment(self, prompt: str, passages: list[Passage]) -> str:
        """The prompt the model is conditioned on (the provider's configurable template)."""

    def fit(self, prompt: str, passages: list[Passage], tokenizer: TextEncoder, budget: int) -> list[Passage]:
        """The passages to keep, best first, so that ``augment(prompt, kept)`` encodes to at most
        ``budget`` tokens; the prompt itself must stay whole."""


class RetrieverProvider(Provider):
    """Document index used to augment prompts at generation time."""

    kind = "retriever"

    @abstractmethod
    def build(self) -> Retriever:
        ...


class Voter(Protocol):
    """What :meth:`VoterProvider.build` returns: how many samples to draw, whether to vote, and the
    request its pure data hook (``VoterProvider.vote_hook``) decides on."""

    #: Candidates to sample per question, and their sampling temperature.
    samples: int
    temperature: float
    #: Next-token entropy (nats) above which a vote is worth K samples; None: always vote.
    threshold: float | None

    def request(self, candidates: list[str], logprobs: list[float]) -> dict[str, Any]:
        """JSON for the vote hook: ``candidates``, their mean ``logprobs`` and the voter's own settings."""

    def entropy(self, probs: list[float]) -> float:
        """Entropy in nats of a next-token distribution."""

    def should_vote(self, probs: list[float], threshold: float | None = None) -> bool:
        """Whether the model is unsure enough (entropy above ``threshold``) to be worth K samples."""


class VoterProvider(Provider):
    """Chooses among sampled candidates (self-consistency).

    ``vote_hook`` names the pure data hook ``"module:function"``: it takes what
    :meth:`Voter.request` built and returns the vote as JSON (``winner``, ``normalised``,
    ``agreement``, ``votes``, ``counts``, ``tie_broken_by_logprob``), so the kernel can run it in a
    sandbox (:mod:`apt.isolation`).
    """

    kind = "voter"
    vote_hook: ClassVar[str]

    @abstractmethod
    def build(self) -> Voter:
        ...


class QuantProvider(Provider):
    """Rewrites a trained model for cheaper inference."""

    kind = "quant"
    #: Device types the rewritten model runs on; empty means any.
    devices: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def apply(self, model: LanguageModel) -> LanguageModel:
        """The model rewritten in place or anew; it must still be a :class:`apt.LanguageModel`."""

    def restore(self, model: LanguageModel, device: str) -> LanguageModel:
        """``model`` (freshly built, float) rewritten so a quantised checkpoint's state dict loads into it.

        What :func:`apt.checkpoint.load_model` calls for a checkpoint written by ``apt quantize``;
        override it when loading needs more than :meth:`apply`.
        """
        wanted = device.split(":")[0]
        if self.devices and wanted not in self.devices:
            raise ProviderError(f"quant.{self.name} runs on {' or '.join(self.devices)} only: "
                                f"pass --device {self.devices[0]}")
        return self.apply(model)


class Tokenizer(Protocol):
    """What :meth:`TokenizerProvider.build` returns; train, eval, generate and serve use only this."""

    @property
    def vocab_size(self) -> int:
        """Number of token ids; the model's embedding has this many rows."""

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; raises :class:`apt.errors.AptError` for text it cannot encode."""

    def decode(self, ids: Iterable[int]) -> str:
        """The text of ``ids``; never raises for ids below ``vocab_size``."""

    def encodable(self, text: str) -> str:
        """``text`` without the characters the tokenizer cannot encode (for text the user did not write)."""

    def state(self) -> dict[str, Any]:
        """Everything needed to rebuild this exact tokenizer, as plain JSON-able data.

        ``"kind"`` must be the provider's name: checkpoints store this dict and
        :func:`apt.tokenizers.tokenizer_from_state` finds the provider through it.
        """


class TokenizerProvider(Provider):
    """Turns text into token ids; its state travels inside every checkpoint (``data.tokenizer``)."""

    kind = "tokenizer"

    @abstractmethod
    def build(self, texts: Iterable[str]) -> Tokenizer:
        """A tokenizer for a new run; ``texts`` lazily yields the training corpus in chunks
        (iterate it only if the vocabulary is learnt from the corpus)."""

    @abstractmethod
    def from_state(self, state: dict[str, Any]) -> Tokenizer:
        """The tokenizer a checkpoint saved with :meth:`Tokenizer.state`, exactly as it was."""


BASES: dict[str, type[Provider]] = {
    cls.kind: cls
    for cls in (AttentionProvider, FFNProvider, RouterProvider, AlignProvider, EncoderProvider, FusionProvider,
                RetrieverProvider, VoterProvider, QuantProvider, TokenizerProvider)
}


def check_provider_class(obj: object, entry_name: str) -> type[Provider]:
    """``obj`` checked against the contract of the entry point ``entry_name`` (``"<kind>.<name>"``).

    The one check every gate runs (the registry when it loads a provider, the sandbox when it
    validates a plugin, the conformance suite): the class implements the interface of its kind,
    declares the entry's name, and its default config validates. Raises :class:`ProviderError`.
    """
    kind, _, name = entry_name.partition(".")
    if kind not in BASES or not name:
        raise ProviderError(f"entry point name {entry_name!r} must be '<kind>.<name>' with kind in "
                            f"{', '.join(KINDS)}")
    base = BASES[kind]
    if not (isinstance(obj, type) and issubclass(obj, base)):
        raise ProviderError(f"{obj!r} is not a subclass of apt.providers.{base.__name__}")
    if issubclass(obj, EncoderProvider) and getattr(obj, "modality", None) not in MODALITIES:
        raise ProviderError(f"{obj.__name__}.modality must be one of {', '.join(MODALITIES)}, "
                            f"got {getattr(obj, 'modality', None)!r}")
    if obj.name != name:
        raise ProviderError(f"class declares name {obj.name!r}, but its entry point is {entry_name!r}")
    if not (isinstance(obj.Config, type) and dataclasses.is_dataclass(obj.Config)):
        raise ProviderError(f"{obj.__name__}.Config must be a dataclass (fields made with apt.config.option)")
    try:
        obj.Config()
    except (ConfigError, TypeError, ValueError) as err:
        raise ProviderError(f"its default config does not validate: {err}") from None
    return obj


# -- capabilities: optional behaviour a provider's modules declare -------------------------------


@runtime_checkable
class Switchable(Protocol):
    """A module the curriculum turns on and off (``schedules.enable_<switch>_at_epoch``).

    Built from the start (so checkpoints and optimizer groups stay stable), it must act as what
    its slot held before while ``enabled`` is False (MoE: the dense FFN; an aligner: no loss). The
    provider names the switch in :attr:`Provider.switch`; the trainer sets ``enabled``.
    """

    enabled: bool


@runtime_checkable
class ResidualOutput(Protocol):
    """A ``Linear`` that writes into the residual stream: initialised with std 0.02/sqrt(2 n_layer)."""

    apt_residual: bool


@runtime_checkable
class SelfInitialised(Protocol):
    """A module that initialised its own weights: the builder's GPT-2 initialisation leaves it alone."""

    apt_init_done: bool


@runtime_checkable
class HasInferenceForm(Protocol):
    """A module with an equivalent inference-only form whose weights sit in plain ``nn.Linear`` layers.

    Quantisers swap it in first so they can reach every weight (Tri-Vein attention folds its
    projections once instead of on every forward).
    """

    def inference_form(self) -> nn.Module:
        ...


@runtime_checkable
class SupportsKVCache(Protocol):
    """An attention module that decodes incrementally from a key/value cache.

    ``forward_cached(x, cache)`` receives only the new positions ``x`` (B, T, C) and returns what
    ``forward`` would return at those positions given every earlier one: it projects the new
    queries, keys and values and attends through ``cache.attend(q, k, v)`` (or ``cache.append``
    and its own kernel), which stores the keys and values at their positions and applies the
    causal and per-row masks. Without it, generation re-runs the whole window for every token.
    """

    def forward_cached(self, x: torch.Tensor, cache: LayerCache) -> torch.Tensor:
        ...


@runtime_checkable
class EvidenceAligner(Protocol):
    """An aligner (``model.extras["align"]``) that mixes retrieved evidence into the hidden states.

    Generation conditions every sampling step on ``evidence_view``; a retriever hands evidence
    to training through ``provide_evidence`` and the aligner's hook takes it once per batch.
    """

    def provide_evidence(self, evidence: torch.Tensor) -> None:
        ...

    def take_evidence(self) -> torch.Tensor | None:
        ...

    def evidence_view(self, hidden: torch.Tensor, evidence: torch.Tensor, lm_head: nn.Module) -> Any:
        """The aligned state (``.hidden``, ``.logits``) for hidden (B, T, C) and evidence (B, C)."""


@runtime_checkable
class MediaEncoder(Protocol):
    """What :meth:`EncoderProvider.build` returns: ``forward(inputs (M, ...)) -> (M, n_tokens, d_out)``."""

    n_tokens: int
    d_out: int


@runtime_checkable
class Fusion(Protocol):
    """What :meth:`FusionProvider.build` returns; ``media`` is an :class:`apt.batch.Media` whose
    ``features`` the model has filled with each encoder's output."""

    def inject(self, embeddings: torch.Tensor, media: Media) -> torch.Tensor:
        """Token embeddings (B, T, C) with media mixed in (before position embeddings are added)."""

    def after_block(self, layer: int, x: torch.Tensor, media: Media) -> torch.Tensor:
        """The residual stream (B, T, C) after block ``layer``, with media mixed in if this fusion does so there."""
