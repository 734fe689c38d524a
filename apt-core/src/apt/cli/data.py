"""``apt data prepare NAME --out DIR``: build a corpus that a plugin knows how to make.

Datasets come from the entry-point group ``apt.datasets``: ``digits = "apt_plugin_vision.digits:prepare"``.
The function's contract: ``prepare(out: Path, *, seed: int) -> dict[str, int]`` writes
``train.jsonl`` and ``val.jsonl`` (records ``{"text": ..., "image"|"audio": "relative/path"}``)
and their media files under ``out`` and returns counts to show (``{"train": 1437, "val": 360}``);
a missing tool or package is an :class:`apt.errors.AptError` naming how to install it.

The corpus is built in a scratch folder beside ``DIR`` and renamed into place, so an
interrupted prepare never leaves half a corpus where training would find it.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Sequence
from importlib.metadata import entry_points
from pathlib import Path

from apt.atomic import fsync_dir
from apt.cli import ArgumentParser
from apt.errors import AptError

GROUP = "apt.datasets"
#: First-party datasets, so that a missing one's error says what to install.
PACKAGES = {"digits": "apt-plugin-vision", "spoken-digits": "apt-plugin-audio"}


def run(command: str, argv: Sequence[str]) -> int:
    p = ArgumentParser(prog="apt data", description="build corpora that plugins provide (apt.datasets)")
    sub = p.add_subparsers(dest="action", required=True)
    prep = sub.add_parser("prepare", help="build a dataset's train.jsonl and val.jsonl with its media files")
    prep.add_argument("name", help="dataset name (apt data list shows them)")
    prep.add_argument("--out", type=Path, required=True, help="folder to create")
    prep.add_argument("--seed", type=int, default=0, help="seed of the split and of any synthesis (default 0)")
    prep.add_argument("--overwrite", action="store_true", help="replace DIR if it already holds files")
    prep.add_argument("--json", action="store_true", help="print the counts as JSON")
    sub.add_parser("list", help="datasets the installed plugins provide")
    args = p.parse_args(argv)
    found = {ep.name: ep for ep in entry_points(group=GROUP)}
    if args.action == "list":
        for name, ep in sorted(found.items()):
            print(f"{name:<16} {ep.dist.metadata['Name'] if ep.dist else '?'}")
        return 0
    if args.name not in found:
        hint = (f"it comes with {PACKAGES[args.name]}: pip install {PACKAGES[args.name]}" if args.name in PACKAGES
                else f"installed: {', '.join(sorted(found)) or 'none'}")
        raise AptError(f"no dataset {args.name!r}: {hint}")
    out: Path = args.out
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not args.overwrite:
            raise AptError(f"--out {out} already exists and is not empty: pass --overwrite or another folder")
    prepare = found[args.name].load()
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        counts = prepare(scratch, seed=args.seed)
        for split in ("train", "val"):
            if not (scratch / f"{split}.jsonl").is_file():
                raise AptError(f"dataset {args.name!r} wrote no {split}.jsonl (a bug in its plugin)")
        if out.exists():
            shutil.rmtree(out)
        scratch.rename(out)
        fsync_dir(out.parent)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if args.json:
        print(json.dumps({"dataset": args.name, "out": str(out), **counts}))
    else:
        shown = ", ".join(f"{k} {v:,}" for k, v in counts.items())
        print(f"{args.name}: {shown} records in {out} (train.jsonl, val.jsonl)")
    return 0
