"""Retrieval-augmented prompts, the same for ``apt generate --index`` and ``apt serve --index``.

A retriever provider (``retriever.*``, from its own package) searches an index built by
``apt index build``; this module fits the passages into the model's context with the prompt and
computes the evidence vector a model with an aligner is conditioned on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from apt.errors import AptError, ConfigError
from apt.providers import RetrieverProvider
from apt.registry import DEFAULTS, default_registry

if TYPE_CHECKING:
    import torch

    from apt.model import LanguageModel
    from apt.profile import Profile
    from apt.tokenizers import Tokenizer


@dataclass
class Retrieved:
    """What retrieval did for one prompt."""

    prompt: str
    #: Every passage found, best first: rank, score, source, text and whether it fit the context.
    passages: list[dict[str, Any]]
    #: How many passages fit, and whether the last of them was cut short.
    kept: int
    cut: bool
    #: (1, d_model), or None when the model has no aligner to take it.
    evidence: torch.Tensor | None


class Retrieval:
    """An open index and the retriever that reads it."""

    def __init__(self, profile: Profile, index: Path, *, retriever: str | None = None, passages: int = 3,
                 embedding_model: str | None = None) -> None:
        if passages < 1:
            raise AptError(f"--passages must be >= 1, got {passages}")
        self.name = retriever or DEFAULTS["retriever"]
        self.index = index
        self.passages = passages
        options = dict(profile.provider_options("retriever", self.name))
        if embedding_model:
            options["embedding_model"] = embedding_model
        try:
            provider = default_registry().make("retriever", self.name, options)
        except ConfigError as err:
            raise err.located(f"--retriever (with the checkpoint profile's providers.retriever.{self.name})") from None
        assert isinstance(provider, RetrieverProvider)
        self.retriever = provider.build()
        self.searcher = self.retriever.open(index)

    def prepare(self, model: LanguageModel, tokenizer: Tokenizer, prompt: str, *, max_new_tokens: int,
                device: str = "cpu") -> Retrieved:
        """The prompt with the passages that fit before it (a quarter of the context, at most, is
        left for the answer) and their evidence vector."""
        from apt.generate import evidence_vector

        found = self.searcher.search(prompt, self.passages)
        block = model.dims.block_size
        kept = self.retriever.fit(prompt, found, tokenizer, block - min(max_new_tokens, block // 4))
        cut = bool(kept) and len(kept[-1].text) < len(tokenizer.encodable(found[len(kept) - 1].text))
        shown = [{"rank": i + 1, "score": p.score, "source": p.source, "text": p.text, "used": i < len(kept)}
                 for i, p in enumerate(found)]
        evidence = evidence_vector(model, tokenizer, [p.text for p in kept], device=device)
        return Retrieved(self.retriever.augment(prompt, kept), shown, len(kept), cut, evidence)
