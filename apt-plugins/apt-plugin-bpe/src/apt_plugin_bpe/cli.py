"""``apt tokenizer train``: a byte-level BPE learnt from a corpus, written as DIR/tokenizer.json."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from apt import AptError, ArgumentParser


def parser() -> ArgumentParser:
    p = ArgumentParser(prog="apt tokenizer", description="train tokenizers for data.tokenizer: bpe")
    sub = p.add_subparsers(dest="action", required=True)
    t = sub.add_parser("train", help="learn a byte-level BPE from a text or JSONL corpus",
                       description="learn a byte-level BPE from a corpus into DIR/tokenizer.json; a profile uses "
                                   "it with data.tokenizer: bpe and providers.tokenizer.bpe.path: DIR")
    t.add_argument("--data", required=True, type=Path, help="text or JSONL file")
    t.add_argument("--format", choices=["auto", "text", "jsonl"], default="auto")
    t.add_argument("--jsonl-field", default="text", help="field holding each JSONL document's text")
    t.add_argument("--vocab-size", type=int, default=4096, help="tokens in the vocabulary (257 or more)")
    t.add_argument("--min-frequency", type=int, default=2, help="times a pair must occur to be merged")
    t.add_argument("--out", required=True, type=Path, help="directory to write tokenizer.json to")
    return p


def main(argv: Sequence[str]) -> int:
    args = parser().parse_args(argv)
    if args.vocab_size < 257:
        raise AptError("--vocab-size must be at least 257 (the 256 bytes and one merge)")
    if args.min_frequency < 1:
        raise AptError("--min-frequency must be at least 1")
    from apt import read_chunks
    from apt_plugin_bpe.bpe import train

    tokenizer = train(read_chunks(args.data, args.format, args.jsonl_field, "--data"), args.vocab_size,
                      args.min_frequency)
    file = tokenizer.save(args.out)
    print(f"wrote {file} (vocabulary {tokenizer.vocab_size}); use it with --set data.tokenizer=bpe "
          f"--set providers.tokenizer.bpe.path={args.out}")
    return 0
