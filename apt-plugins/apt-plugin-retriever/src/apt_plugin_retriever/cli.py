"""``apt index build | search | info`` (entry point group ``apt.commands``, name ``index``)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from apt import AptError, ArgumentParser, parse_assignments

PROG = "apt index"
RETRIEVERS = ("bm25", "dense")


def parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog=PROG, description="Build, search and inspect retrieval indexes (retriever.bm25, "
                                       "retriever.dense) used by apt generate --index.")
    sub = p.add_subparsers(dest="action", metavar="build|search|info", parser_class=ArgumentParser)
    sub.required = True

    b = sub.add_parser("build", help="index documents into one file",
                       description="Index a directory (every *.txt, *.md, *.jsonl under it), a text file or a "
                                   "JSONL file (field 'text', optional 'id'/'source').")
    b.add_argument("--docs", type=Path, required=True, metavar="DIR_OR_FILE")
    b.add_argument("--out", type=Path, required=True, metavar="INDEX", help="index file to write (atomically)")
    b.add_argument("--retriever", choices=RETRIEVERS, default="bm25", help="default: bm25")
    b.add_argument("--embedding-model", metavar="DIR", help="local sentence-embedding model (retriever dense)")
    b.add_argument("--max-chars", type=int, default=600, help="longest passage in characters (default 600)")
    _set_arg(b)

    s = sub.add_parser("search", help="top passages for a query")
    s.add_argument("--index", type=Path, required=True)
    s.add_argument("--query", required=True)
    s.add_argument("--top-k", type=int, default=5, help="passages to show (default 5)")
    s.add_argument("--retriever", choices=RETRIEVERS, help="default: the one the index was built with")
    s.add_argument("--embedding-model", metavar="DIR", help="default: the model the index was built with")
    s.add_argument("--json", action="store_true", help="print a JSON list of passages")
    _set_arg(s)

    i = sub.add_parser("info", help="print an index's header")
    i.add_argument("--index", type=Path, required=True)
    i.add_argument("--json", action="store_true", help="print the header as JSON")
    return p


def _set_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="retriever option, e.g. --set tokenizer=char3, --set k1=1.2, "
                        "--set 'template=\"Context:\\n{passages}\\n{prompt}\"' (YAML value)")


def _retriever(name: str, options: dict[str, Any]) -> Any:
    from apt import RetrieverProvider, default_registry

    provider = default_registry().make("retriever", name, options)
    if not isinstance(provider, RetrieverProvider):
        raise AptError(f"retriever.{name} is registered as a retriever but does not implement RetrieverProvider")
    return provider.build()


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def build(args: argparse.Namespace) -> int:
    from apt_plugin_retriever.documents import load_documents
    from apt_plugin_retriever.indexfile import is_index

    options = parse_assignments(args.sets, "--set", "k1=1.2")
    if args.embedding_model:
        if args.retriever != "dense":
            raise AptError("--embedding-model applies to --retriever dense")
        options["embedding_model"] = args.embedding_model
    if args.out.is_dir():
        raise AptError(f"--out {args.out} is a directory; name the index file, e.g. --out {args.out / 'index.apt'}")
    if args.out.exists() and not is_index(args.out):
        raise AptError(f"--out {args.out} exists and is not an APT retrieval index; refusing to overwrite it "
                       f"(remove it or choose another name)")
    start = time.perf_counter()
    retriever = _retriever(args.retriever, options)
    loaded = load_documents(args.docs, args.max_chars)
    header = retriever.build_index(loaded.passages, args.out, extra={
        "documents": loaded.documents,
        "source": {"docs": str(args.docs), "files": loaded.files, "max_chars": args.max_chars}})
    seconds = time.perf_counter() - start
    size = args.out.stat().st_size
    print(f"indexed {_plural(loaded.documents, 'document')} from {_plural(loaded.files, 'file')} into "
          f"{_plural(header['passages'], 'passage')} with retriever.{args.retriever}")
    print(f"built in {seconds:.2f} s; wrote {args.out} ({_size(size)})")
    return 0


def search(args: argparse.Namespace) -> int:
    from apt_plugin_retriever.indexfile import read_header

    if args.top_k < 1:
        raise AptError(f"--top-k must be >= 1, got {args.top_k}")
    if not args.query.strip():
        raise AptError("--query is empty; pass the text to search for")
    header = read_header(args.index)
    name = args.retriever or str(header.get("retriever", "")).removeprefix("retriever.")
    if name not in RETRIEVERS:
        raise AptError(f"{args.index} was built with {header.get('retriever')}, which this apt-plugin-retriever "
                       f"does not provide; upgrade it: pip install -U apt-plugin-retriever")
    options = parse_assignments(args.sets, "--set", "k1=1.2")
    if args.embedding_model:
        options["embedding_model"] = args.embedding_model
    retriever = _retriever(name, options)
    index = retriever.open(args.index)
    start = time.perf_counter()
    passages = index.search(args.query, args.top_k)
    ms = (time.perf_counter() - start) * 1000
    if args.json:
        print(json.dumps([{"rank": i, "score": p.score, "source": p.source, "text": p.text}
                          for i, p in enumerate(passages, 1)]))
        return 0
    print(f"{_plural(len(passages), 'passage')} for {args.query!r} from {args.index} (retriever.{name}, {ms:.1f} ms):")
    for i, p in enumerate(passages, 1):
        print(f"[{i}] score {p.score:.4f}  {p.source}")
        for line in p.text.splitlines():
            print(f"    {line}")
    return 0


def _flatten(data: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows = []
    for key, value in data.items():
        if isinstance(value, dict):
            rows += _flatten(value, f"{prefix}{key}.")
        else:
            rows.append((f"{prefix}{key}", value))
    return rows


def info(args: argparse.Namespace) -> int:
    from apt_plugin_retriever.indexfile import read_header

    header = read_header(args.index)
    size = args.index.stat().st_size
    if args.json:
        print(json.dumps({**header, "file": {"path": str(args.index), "bytes": size}}, indent=2))
        return 0
    rows = [("file", f"{args.index} ({_size(size)})")] + _flatten(header)
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``apt index ...``; AptError propagates to the apt CLI, which prints one line and exits 2."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parser().parse_args(args_list)
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    return {"build": build, "search": search, "info": info}[args.action](args)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except AptError as err:
        print(f"apt: error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
