"""Corpora as memory-mapped token arrays, and deterministic batches.

A corpus is tokenized once, in chunks, into ``APT_HOME/cache/tokens/<key>.bin`` (written
atomically) and read back as a read-only ``np.memmap``, so corpora larger than memory work.
The batch for (step, micro-batch, rank) comes from a generator seeded by those numbers
alone: the data position of a run *is* its step, which makes resume exact.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from apt.atomic import atomic_write
from apt.batch import Batch
from apt.errors import AptError
from apt.home import apt_home
from apt.profile import DataConfig
from apt.registry import Registry
from apt.tokenizers import Tokenizer, build_tokenizer

CHUNK_CHARS = 1 << 24


def bundled_corpus() -> Path:
    """The small corpus shipped with apt (Shakespeare, public domain) for the default profile."""
    return Path(str(resources.files("apt") / "corpus" / "tiny_shakespeare.txt"))


def read_chunks(path: Path, fmt: str = "auto", field: str = "text", key: str = "data.train_path") -> Iterator[str]:
    """Text of ``path`` in chunks; JSONL documents are joined by newlines."""
    if not path.is_file():
        raise AptError(f"{key}: file {str(path)!r} not found; point it at a text or JSONL corpus")
    jsonl = fmt == "jsonl" or (fmt == "auto" and path.suffix == ".jsonl")
    try:
        with path.open(encoding="utf-8", newline="") as f:
            if not jsonl:
                while chunk := f.read(CHUNK_CHARS):
                    yield chunk
                return
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    doc = json.loads(line)
                    text = doc[field]
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise AptError(f"{path}:{lineno}: expected a JSON object with a string {field!r} "
                                   f"(set data.jsonl_field)") from None
                if not isinstance(text, str):
                    raise AptError(f"{path}:{lineno}: {field!r} must be a string")
                yield text + "\n"
    except UnicodeDecodeError as err:
        raise AptError(f"{key}: {path} is not UTF-8 text ({err.reason} at byte {err.start})") from None


def encode_to_array(chunks: Iterator[str], tokenizer: Tokenizer, cache_key: str) -> np.ndarray:
    """Tokenize into the cache (once) and return the memory-mapped tokens."""
    dtype = np.uint8 if tokenizer.vocab_size <= 256 else np.uint16 if tokenizer.vocab_size <= 65536 else np.int32
    cache = apt_home() / "cache" / "tokens"
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"{cache_key}.bin"
    if not path.exists():
        def write(out):
            for chunk in chunks:
                out.write(np.asarray(tokenizer.encode(chunk), dtype=dtype).tobytes())
        atomic_write(path, write)
    if path.stat().st_size == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")


@dataclass
class Corpus:
    train: np.ndarray
    val: np.ndarray
    tokenizer: Tokenizer


def corpus_paths(cfg: DataConfig, *, required: bool = False) -> list[tuple[Path, str]]:
    """The corpus files with the profile key naming each; a missing one is one line with the fix.

    ``required``: no bundled fallback (a multimodal profile needs its own JSONL).
    """
    if cfg.train_path is None and required:
        raise AptError("data.train_path: this profile needs a JSONL corpus" + prepare_hint(cfg))
    paths = [(Path(cfg.train_path) if cfg.train_path else bundled_corpus(), "data.train_path")]
    if cfg.val_path:
        paths.append((Path(cfg.val_path), "data.val_path"))
    for path, key in paths:
        if not path.is_file():
            raise AptError(f"{key}: file {str(path)!r} not found" + (prepare_hint(cfg) or
                           "; point it at a text or JSONL corpus"))
    return paths


def prepare_hint(cfg: DataConfig) -> str:
    """How to build the profile's corpus when it names its ``data.prepare`` dataset."""
    if not cfg.prepare:
        return ""
    folder = Path(cfg.train_path).parent if cfg.train_path else Path("data")
    return f"; build it with: apt data prepare {cfg.prepare} --out {folder}"


def corpus_tokenizer(cfg: DataConfig, tokenizer: Tokenizer | None = None, *, required: bool = False,
                     options: Mapping[str, Any] | None = None, registry: Registry | None = None) -> Tokenizer:
    """``tokenizer`` (from a checkpoint) as is, else the ``data.tokenizer`` provider's, configured by
    ``options`` (the profile's ``providers.tokenizer.<name>``) and learnt from the corpus if it needs to."""
    if tokenizer is not None:
        return tokenizer
    paths = corpus_paths(cfg, required=required)
    texts = (c for p, k in paths for c in read_chunks(p, cfg.format, cfg.jsonl_field, k))
    return build_tokenizer(cfg.tokenizer, texts, options, registry)


def load_corpus(cfg: DataConfig, block_size: int, tokenizer: Tokenizer | None = None, *,
                options: Mapping[str, Any] | None = None, registry: Registry | None = None) -> Corpus:
    """Tokenize the configured corpus (see :func:`corpus_tokenizer` for where the tokenizer comes from)."""
    paths = corpus_paths(cfg)
    tokenizer = corpus_tokenizer(cfg, tokenizer, options=options, registry=registry)
    arrays = [encode_to_array(read_chunks(p, cfg.format, cfg.jsonl_field, k), tokenizer, _cache_key(p, cfg, tokenizer))
              for p, k in paths]
    if cfg.val_path:
        train, val = arrays
    else:
        split = int(len(arrays[0]) * (1 - cfg.val_fraction))
        train, val = arrays[0][:split], arrays[0][split:]
    for name, arr in (("training", train), ("validation", val)):
        if len(arr) < block_size + 2:
            raise AptError(f"data: the {name} split has {len(arr)} tokens, fewer than block_size + 2 = "
                           f"{block_size + 2}; use a larger corpus or a smaller model.block_size")
    return Corpus(train, val, tokenizer)


def _cache_key(path: Path, cfg: DataConfig, tokenizer: Tokenizer) -> str:
    st = path.stat()
    ident = json.dumps([str(path.resolve()), st.st_size, st.st_mtime_ns, cfg.format, cfg.jsonl_field,
                        tokenizer.state()])
    return hashlib.sha256(ident.encode()).hexdigest()[:32]


def seed_for(*parts: object) -> int:
    """A 63-bit seed determined by ``parts`` alone (stable across processes and platforms)."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def window_batch(tokens: np.ndarray, offsets: Sequence[int] | np.ndarray, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    idx = np.asarray(offsets, dtype=np.int64)[:, None] + np.arange(block_size + 1)
    chunk = torch.from_numpy(np.asarray(tokens[idx], dtype=np.int64))
    return chunk[:, :-1], chunk[:, 1:]


class Batches:
    """Random windows of ``block_size + 1`` tokens, a pure function of (seed, step, micro).

    Every rank draws the same global batch of ``world * batch_size`` windows and keeps its own
    slice, so the data of a step does not depend on how many ranks share it: one rank at batch
    2B sees exactly what two ranks at batch B see together, and a run resumed on another number
    of ranks continues on the same data.
    """

    def __init__(self, tokens: np.ndarray, block_size: int, batch_size: int, seed: int, rank: int = 0,
                 world: int = 1) -> None:
        self.tokens = tokens
        self.block_size = block_size
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world = world
        self.high = len(tokens) - block_size - 1

    @property
    def samples(self) -> int:
        """Windows in one pass over the tokens: what an epoch counts."""
        return len(self.tokens) // self.block_size

    def get(self, step: int, micro: int = 0, stream: str = "train") -> Batch:
        offsets = global_picks(self.seed, stream, step, micro, self.high + 1, self.batch_size, self.rank, self.world)
        return Batch(*window_batch(self.tokens, offsets, self.block_size))


def global_picks(seed: int, stream: str, step: int, micro: int, high: int, batch_size: int, rank: int,
                 world: int) -> list[int]:
    """This rank's ``batch_size`` of the ``world * batch_size`` draws in ``[0, high)`` for (step, micro)."""
    gen = torch.Generator().manual_seed(seed_for(seed, stream, step, micro))
    picks = torch.randint(0, high, (world * batch_size,), generator=gen)
    return picks[rank * batch_size:(rank + 1) * batch_size].tolist()


def sequential_windows(tokens: np.ndarray, block_size: int) -> Iterator[tuple[int, int]]:
    """(offset, length) of non-overlapping windows covering every token once (for ``apt eval``)."""
    n = len(tokens) - 1
    for start in range(0, n, block_size):
        yield start, min(block_size, n - start)
