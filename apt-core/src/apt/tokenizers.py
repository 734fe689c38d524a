"""The built-in tokenizer providers (``tokenizer.char``, ``tokenizer.byte``) and the lookup that
rebuilds any provider's tokenizer from the state every checkpoint carries."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from apt.errors import AptError, CheckpointError, ProviderError
from apt.providers import Tokenizer, TokenizerProvider
from apt.registry import Registry, default_registry

__all__ = ["ByteProvider", "ByteTokenizer", "CharProvider", "CharTokenizer", "Tokenizer", "build_tokenizer",
           "tokenizer_from_state"]


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


class CharProvider(TokenizerProvider):
    """One token per character of the training corpus: tiny vocabularies, text outside it cannot be encoded."""

    name = "char"

    def build(self, texts: Iterable[str]) -> CharTokenizer:
        return CharTokenizer.from_texts(texts)

    def from_state(self, state: dict[str, Any]) -> CharTokenizer:
        return CharTokenizer(state["chars"])


class ByteProvider(TokenizerProvider):
    """The 256 UTF-8 byte values: encodes any text, needs no training."""

    name = "byte"

    def build(self, texts: Iterable[str]) -> ByteTokenizer:
        return ByteTokenizer()

    def from_state(self, state: dict[str, Any]) -> ByteTokenizer:
        return ByteTokenizer()


def build_tokenizer(name: str, texts: Iterable[str], options: Mapping[str, Any] | None = None,
                    registry: Registry | None = None) -> Tokenizer:
    """The tokenizer of a new run (``data.tokenizer``); errors name the profile key and what to install."""
    try:
        provider = (registry or default_registry()).make("tokenizer", name, options)
    except ProviderError as err:
        raise AptError(f"data.tokenizer: {err}") from None
    assert isinstance(provider, TokenizerProvider)
    return provider.build(texts)


def tokenizer_from_state(state: dict[str, Any], *, expected: str | None = None,
                         registry: Registry | None = None) -> Tokenizer:
    """The exact tokenizer a checkpoint was trained with, through the provider its state names.

    ``expected`` is the tokenizer the caller's profile asks for: a checkpoint made with another
    one cannot be continued with it (token ids would mean different text), so that is an error.
    ``registry`` is used when it knows the provider; otherwise the process-wide one is.
    """
    name = state.get("kind")
    if not isinstance(name, str) or not name:
        raise CheckpointError(f"the checkpoint's tokenizer state names no provider (got kind={name!r})")
    if expected is not None and expected != name:
        raise CheckpointError(f"the checkpoint was trained with tokenizer {name!r} but data.tokenizer asks for "
                              f"{expected!r}: set data.tokenizer: {name} or start a new run")
    reg = registry if registry is not None and registry.info("tokenizer", name) is not None else default_registry()
    try:
        provider = reg.make("tokenizer", name, None)
    except ProviderError as err:
        raise CheckpointError(f"the checkpoint's tokenizer cannot be loaded: {err}") from None
    assert isinstance(provider, TokenizerProvider)
    try:
        return provider.from_state(state)
    except (AptError, KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"the checkpoint's {name} tokenizer state is damaged: {err!r}") from None
