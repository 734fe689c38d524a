"""A Hugging Face ``tokenizers`` tokenizer behind the interface APT's tokenizers share."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from apt import AptError

FILE = "tokenizer.json"


class BPETokenizer:
    kind = "bpe"

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        # The vocabulary and its serialised form are fixed once built: computed once, not per call.
        self._json = tokenizer.to_str()
        self._size = tokenizer.get_vocab_size(with_added_tokens=True)

    @classmethod
    def from_json(cls, text: str) -> BPETokenizer:
        try:
            return cls(Tokenizer.from_str(text))
        except Exception as err:  # tokenizers raises its own exception types for malformed JSON
            raise AptError(f"not a Hugging Face tokenizer.json: {str(err).splitlines()[0]}") from None

    @classmethod
    def load(cls, path: Path) -> BPETokenizer:
        """The tokenizer in ``path`` (a ``tokenizer.json`` or the folder holding one)."""
        file = path / FILE if path.is_dir() else path
        if not file.is_file():
            raise AptError(f"providers.tokenizer.bpe.path: no {FILE} at {str(file)!r}; train one with "
                           f"apt tokenizer train --data FILE --out DIR")
        try:
            return cls.from_json(file.read_text(encoding="utf-8"))
        except (AptError, UnicodeDecodeError) as err:
            raise AptError(f"providers.tokenizer.bpe.path: {file}: {err}") from None

    @property
    def vocab_size(self) -> int:
        return self._size

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Iterable[int]) -> str:
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=False))

    def encodable(self, text: str) -> str:
        return text

    def save(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        file = folder / FILE
        file.write_text(self._json, encoding="utf-8")
        return file

    def state(self) -> dict[str, Any]:
        return {"kind": self.kind, "tokenizer_json": self._json}


def train(texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> BPETokenizer:
    """A byte-level BPE (GPT-2's scheme: every byte is a token, so any text encodes and decodes exactly)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return BPETokenizer(tokenizer)
