"""Character and byte tokenizers; their full state travels inside every checkpoint."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from apt.errors import AptError


class CharTokenizer:
    kind = "char"

    def __init__(self, chars: str) -> None:
        self.chars = chars
        self.stoi = {c: i for i, c in enumerate(chars)}

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> CharTokenizer:
        seen: set[str] = set()
        for text in texts:
            seen.update(text)
        return cls("".join(sorted(seen)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[c] for c in text]
        except KeyError:
            unknown = sorted({c for c in text if c not in self.stoi})
            raise AptError(f"characters {''.join(unknown)!r} are not in the model's vocabulary of "
                           f"{self.vocab_size} characters; use text drawn from the training corpus "
                           f"or train with data.tokenizer: byte") from None

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.chars[i] for i in ids)

    def encodable(self, text: str) -> str:
        """``text`` without the characters outside the vocabulary (for text the user did not write)."""
        return "".join(c for c in text if c in self.stoi)

    def state(self) -> dict[str, Any]:
        return {"kind": self.kind, "chars": self.chars}


class ByteTokenizer:
    kind = "byte"
    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(ids).decode("utf-8", errors="replace")

    def encodable(self, text: str) -> str:
        return text

    def state(self) -> dict[str, Any]:
        return {"kind": self.kind}


Tokenizer = CharTokenizer | ByteTokenizer


def tokenizer_from_state(state: dict[str, Any]) -> Tokenizer:
    if state.get("kind") == "char":
        return CharTokenizer(state["chars"])
    if state.get("kind") == "byte":
        return ByteTokenizer()
    raise AptError(f"unknown tokenizer {state.get('kind')!r} in checkpoint")
