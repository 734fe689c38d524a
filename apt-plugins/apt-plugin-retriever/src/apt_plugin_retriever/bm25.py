"""Okapi BM25 over an inverted index stored as CSR arrays.

The index keeps raw term frequencies: for term ``t`` the postings ``indptr[t]:indptr[t+1]`` of
``postings_doc`` (passage ids, ascending) and ``postings_tf``. ``k1`` and ``b`` are applied when
the index is opened (one vectorised pass computing each posting's impact), so they can be tuned
without rebuilding. Scoring a query gathers its terms' postings and sums them with one
``np.bincount``; the top k come from ``np.argpartition``.

Score of passage ``d`` for query ``q`` (each query token counts, repeats included)::

    sum_t  idf(t) * tf(t,d) * (k1 + 1) / (tf(t,d) + k1 * (1 - b + b * |d| / avgdl))
    idf(t) = ln(1 + (N - df(t) + 0.5) / (df(t) + 0.5))          (never negative)
"""

from __future__ import annotations

import re
import time
from array import array
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from apt import AptError, Document, Passage
from apt_plugin_retriever.indexfile import TextStore, read_index, write_index
from apt_plugin_retriever.provider import Augmenter, Bm25Config

_WORD = re.compile(r"\w+")


def tokenize_words(text: str) -> list[str]:
    """Lower-cased runs of word characters (Unicode letters, digits, underscore)."""
    return _WORD.findall(text.lower())


def tokenize_char3(text: str) -> list[str]:
    """Character trigrams of each lower-cased word padded with a space: 'cat' -> ' ca', 'cat', 'at '."""
    grams: list[str] = []
    for word in _WORD.findall(text.lower()):
        padded = f" {word} "
        grams.extend(padded[i:i + 3] for i in range(len(padded) - 2))
    return grams


#: name -> (version, function). Bump a version whenever a tokenizer's output changes.
TOKENIZERS: dict[str, tuple[int, Callable[[str], list[str]]]] = {
    "words": (1, tokenize_words),
    "char3": (1, tokenize_char3),
}
DEFAULT_TOKENIZER = "words"


def top_k(scores: np.ndarray, k: int, candidates: np.ndarray | None = None) -> np.ndarray:
    """Indices of the ``k`` highest ``scores`` (among ``candidates``), best first, ties to the lower index."""
    idx = np.arange(len(scores)) if candidates is None else candidates
    if k <= 0 or len(idx) == 0:
        return idx[:0]
    values = scores[idx]
    if len(idx) > k:
        threshold = values[np.argpartition(-values, k - 1)[:k]].min()
        keep = values >= threshold
        idx, values = idx[keep], values[keep]
    return idx[np.lexsort((idx, -values))[:k]]


class Bm25Retriever(Augmenter):
    """What :class:`~apt_plugin_retriever.provider.Bm25Provider` builds."""

    name = "bm25"

    def __init__(self, config: Bm25Config) -> None:
        self.config = config

    def build_index(self, documents: Iterable[Document], out: Path, *,
                    extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Tokenize ``documents`` (each one passage), write the index to ``out``; return its header.

        ``extra`` is recorded in the header as is (the CLI puts the input's description there).
        """
        start = time.perf_counter()
        tokenizer = self.config.tokenizer or DEFAULT_TOKENIZER
        version, tokenize = TOKENIZERS[tokenizer]
        term_ids: dict[str, int] = {}
        post_term, post_doc, post_tf, doc_len = array("i"), array("i"), array("i"), array("i")
        texts: list[str] = []
        sources: list[str] = []
        for doc_id, doc in enumerate(documents):
            tokens = tokenize(doc.text)
            doc_len.append(len(tokens))
            for term, tf in Counter(tokens).items():
                tid = term_ids.get(term)
                if tid is None:
                    tid = term_ids[term] = len(term_ids)
                post_term.append(tid)
                post_doc.append(doc_id)
                post_tf.append(tf)
            texts.append(doc.text)
            sources.append(doc.source)
        if not texts:
            raise AptError("no documents to index; give --docs a directory of .txt/.md/.jsonl files, a text "
                           "file or a JSONL file")
        terms = sorted(term_ids)
        remap = np.empty(len(terms), dtype=np.int32)
        remap[np.fromiter((term_ids[t] for t in terms), dtype=np.int64, count=len(terms))] = np.arange(
            len(terms), dtype=np.int32)
        posting_term = remap[np.frombuffer(post_term, dtype=np.int32)] if len(post_term) else np.zeros(0, np.int32)
        order = np.argsort(posting_term, kind="stable")
        indptr = np.zeros(len(terms) + 1, dtype=np.int64)
        np.cumsum(np.bincount(posting_term, minlength=len(terms)), out=indptr[1:])
        lengths = np.frombuffer(doc_len, dtype=np.int32).copy()
        arrays: dict[str, np.ndarray] = {
            "indptr": indptr,
            "postings_doc": np.frombuffer(post_doc, dtype=np.int32)[order],
            "postings_tf": np.frombuffer(post_tf, dtype=np.int32)[order],
            "doc_len": lengths,
            "vocab": np.frombuffer("\n".join(terms).encode("utf-8"), dtype=np.uint8),
        }
        header = {
            "retriever": "retriever.bm25",
            "documents": len(texts),
            "bm25": {"tokenizer": tokenizer, "tokenizer_version": version, "vocab_size": len(terms),
                     "postings": len(order), "avgdl": float(lengths.mean()),
                     "k1": self.config.k1, "b": self.config.b},
            "build_seconds": round(time.perf_counter() - start, 4),
            **(extra or {}),
        }
        return write_index(out, header, arrays, texts, sources)

    def open(self, path: Path | str) -> Bm25Index:
        """Load an index built by ``retriever.bm25``; refuse one built another way (one line)."""
        path = Path(path)
        header, arrays, texts, sources = read_index(path, "bm25")
        built = header.get("bm25", {})
        name, version = built.get("tokenizer"), built.get("tokenizer_version")
        wanted = self.config.tokenizer or name
        if name not in TOKENIZERS:
            raise AptError(f"{path} was built with tokenizer {name!r}, which this apt-plugin-retriever does not "
                           f"know; upgrade it (pip install -U apt-plugin-retriever) or rebuild the index")
        if wanted != name:
            raise AptError(f"{path} was built with tokenizer {name!r}, not {wanted!r}; rebuild it with apt index "
                           f"build --set tokenizer={wanted} ... or use tokenizer={name} (apt index: --set "
                           f"tokenizer={name}; profile: providers.retriever.bm25.tokenizer)")
        current = TOKENIZERS[name][0]
        if version != current:
            raise AptError(f"{path} was built with tokenizer {name!r} version {version}, this apt-plugin-retriever "
                           f"has version {current}; rebuild it with apt index build --docs DIR_OR_FILE --out {path}")
        return Bm25Index(path, header, arrays, texts, sources, TOKENIZERS[name][1], self.config.k1, self.config.b)


class Bm25Index:
    """An opened BM25 index (a :class:`apt.providers.SearchIndex`)."""

    def __init__(self, path: Path, header: dict[str, Any], arrays: dict[str, np.ndarray], texts: TextStore,
                 sources: TextStore, tokenize: Callable[[str], list[str]], k1: float, b: float) -> None:
        self.path = path
        self.header = header
        self.texts = texts
        self.sources = sources
        self.tokenize = tokenize
        try:
            self.indptr = arrays["indptr"].astype(np.int64, copy=False)
            self.docs = arrays["postings_doc"].astype(np.int64)
            tf = arrays["postings_tf"].astype(np.float64)
            doc_len = arrays["doc_len"].astype(np.float64)
            vocab = bytes(arrays["vocab"]).decode("utf-8")
        except (KeyError, UnicodeDecodeError) as err:
            raise AptError(f"{path} is corrupt (missing {err}); rebuild it with apt index build") from None
        terms = vocab.split("\n") if len(self.indptr) > 1 else []
        if len(terms) != len(self.indptr) - 1 or len(doc_len) != len(texts):
            raise AptError(f"{path} is corrupt (vocabulary and postings disagree); rebuild it with apt index build")
        self.vocab = {t: i for i, t in enumerate(terms)}
        n = len(doc_len)
        avgdl = float(doc_len.mean()) if n and doc_len.sum() > 0 else 1.0
        df = np.diff(self.indptr).astype(np.float64)
        self.idf = np.log1p((n - df + 0.5) / (df + 0.5))
        norm = k1 * (1.0 - b + b * doc_len / avgdl)
        impact = tf * (k1 + 1.0) / (tf + norm[self.docs]) if len(tf) else tf
        self.impact = impact.astype(np.float32)
        self.n = n

    def __len__(self) -> int:
        return self.n

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every passage for ``query`` (float64, zeros where no term matches)."""
        counts = Counter(tid for tid in map(self.vocab.get, self.tokenize(query)) if tid is not None)
        if not counts:
            return np.zeros(self.n)
        docs, weights = [], []
        for tid, qtf in counts.items():
            lo, hi = self.indptr[tid], self.indptr[tid + 1]
            docs.append(self.docs[lo:hi])
            weights.append(self.impact[lo:hi] * (self.idf[tid] * qtf))
        return np.bincount(np.concatenate(docs), weights=np.concatenate(weights), minlength=self.n)

    def search(self, query: str, k: int) -> list[Passage]:
        """The ``k`` best passages sharing at least one term with ``query``, best first."""
        scores = self.scores(query)
        best = top_k(scores, k, np.flatnonzero(scores > 0))
        return [Passage(self.texts[i], self.sources[i], float(scores[i])) for i in best]
