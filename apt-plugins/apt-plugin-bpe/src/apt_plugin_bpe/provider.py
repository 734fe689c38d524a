"""The tokenizer.bpe provider (imports ``tokenizers`` only when a tokenizer is built)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from apt import TokenizerProvider, option

if TYPE_CHECKING:
    from apt_plugin_bpe.bpe import BPETokenizer


@dataclass(frozen=True)
class BPEConfig:
    vocab_size: int = option(4096, ge=257, le=1 << 20,
                             doc="tokens in the vocabulary learnt from the training corpus (256 bytes + merges)")
    min_frequency: int = option(2, ge=1, le=1 << 30, doc="times a pair must occur to be merged")
    path: str | None = option(None, doc="folder (or file) holding a tokenizer.json to use instead of training "
                                        "one, e.g. GPT-2's")


class BPEProvider(TokenizerProvider):
    """Byte-level BPE: encodes any text; learnt from the corpus at the first ``apt train`` unless
    ``path`` names a ``tokenizer.json``; the whole tokenizer is stored in every checkpoint."""

    name = "bpe"
    Config = BPEConfig

    def build(self, texts: Iterable[str]) -> BPETokenizer:
        from apt_plugin_bpe.bpe import BPETokenizer, train

        if self.config.path is not None:
            return BPETokenizer.load(Path(self.config.path))
        return train(texts, self.config.vocab_size, self.config.min_frequency)

    def from_state(self, state: dict[str, Any]) -> BPETokenizer:
        from apt_plugin_bpe.bpe import BPETokenizer

        return BPETokenizer.from_json(state["tokenizer_json"])
