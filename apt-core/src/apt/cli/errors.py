"""``apt errors``: failures that past runs recorded (hook errors, NaN/Inf steps)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from apt.atomic import atomic_write
from apt.cli import ArgumentParser


def run(command: str, argv: Sequence[str]) -> int:
    p = ArgumentParser(prog="apt errors", description="failures recorded in APT_HOME/errors.db")
    sub = p.add_subparsers(dest="action", required=True)
    ls = sub.add_parser("list", help="most recent first")
    ls.add_argument("--limit", type=int, default=20)
    ls.add_argument("--plugin")
    ls.add_argument("--type", choices=["hook_error", "nonfinite"])
    ls.add_argument("--json", action="store_true")
    groups = sub.add_parser("groups", help="grouped by failure pattern, most frequent first")
    groups.add_argument("--json", action="store_true")
    export = sub.add_parser("export", help="write a JSON report")
    export.add_argument("path")
    args = p.parse_args(argv)

    from apt.errorstore import ErrorStore

    store = ErrorStore()
    if args.action == "export":
        report = json.dumps(store.report(), indent=2).encode()
        atomic_write(Path(args.path), lambda f: f.write(report))
        print(f"wrote {len(store.list(limit=10_000))} errors to {args.path}")
    elif args.action == "groups":
        found = store.groups()
        if args.json:
            print(json.dumps(found, indent=2))
        for g in [] if args.json else found:
            print(f"{g['count']:>5}x  {g['type']:<10} {g['plugin'] or '-':<20} {g['pattern']}")
    else:
        rows = store.list(limit=args.limit, plugin=args.plugin, type=args.type)
        if args.json:
            print(json.dumps(rows, indent=2))
        for r in [] if args.json else rows:
            print(f"#{r['id']} {r['time'][:19]} {r['type']:<10} {r['plugin'] or '-':<20} {r['message']}")
        if not rows and not args.json:
            print("no errors recorded")
    return 0
