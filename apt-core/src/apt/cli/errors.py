"""``apt errors``: failures that past runs recorded (crashes, hook errors, NaN/Inf steps).

Resolved errors stay in the store (a recurrence after a fix is worth seeing with ``--all``)
but drop out of ``list`` and ``groups``, so what is shown is what still needs attention.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from apt.atomic import atomic_write
from apt.cli import ArgumentParser
from apt.errors import AptError

#: Shown in listings; ``--run`` accepts this prefix or any longer one.
RUN_ID_SHOWN = 8


def run(command: str, argv: Sequence[str]) -> int:
    p = ArgumentParser(prog="apt errors", description="failures recorded in APT_HOME/errors.db")
    sub = p.add_subparsers(dest="action", required=True)
    ls = sub.add_parser("list", help="most recent first (unresolved only unless --all)")
    ls.add_argument("--limit", type=int, default=20)
    ls.add_argument("--plugin", help="only errors of this plugin or provider")
    ls.add_argument("--type", choices=["crash", "hook_error", "nonfinite"])
    ls.add_argument("--run", metavar="ID", help="only this run (a prefix of its id is enough)")
    ls.add_argument("--since", metavar="WHEN", help="30m, 2h, 1d, or an ISO date/time (UTC)")
    ls.add_argument("--all", action="store_true", help="include resolved errors")
    ls.add_argument("--json", action="store_true")
    show = sub.add_parser("show", help="one error in full, with its traceback")
    show.add_argument("id", help="the number apt errors list shows (with or without #)")
    show.add_argument("--json", action="store_true")
    resolve = sub.add_parser("resolve", help="mark errors resolved: hides them from list and groups")
    resolve.add_argument("target", metavar="ID|PATTERN",
                         help="an id, or a pattern as apt errors groups prints it, or text the messages contain")
    groups = sub.add_parser("groups", help="grouped by failure pattern, most frequent first")
    groups.add_argument("--all", action="store_true", help="include resolved errors")
    groups.add_argument("--json", action="store_true")
    export = sub.add_parser("export", help="write a JSON report")
    export.add_argument("path")
    args = p.parse_args(argv)

    from apt.errorstore import ErrorStore, parse_since

    store = ErrorStore()
    if args.action == "export":
        report = json.dumps(store.report(), indent=2).encode()
        atomic_write(Path(args.path), lambda f: f.write(report))
        print(f"wrote {len(store.list(limit=10_000))} errors to {args.path}")
    elif args.action == "show":
        return _show(store, args.id, args.json)
    elif args.action == "resolve":
        ids = store.resolve(args.target)
        if not ids:
            raise AptError(f"resolve {args.target!r}: no unresolved error has that id or matches that pattern "
                           f"(see apt errors list)")
        print(f"resolved {len(ids)} error{'s' if len(ids) != 1 else ''}: " + ", ".join(f"#{i}" for i in ids))
    elif args.action == "groups":
        found = store.groups(resolved=args.all)
        if args.json:
            print(json.dumps(found, indent=2))
            return 0
        for g in found:
            print(f"{g['count']:>5}x  {g['type']:<10} {g['plugin'] or '-':<20} {g['pattern']}")
        if not found:
            print(_nothing(store, args.all))
    else:
        since = parse_since(args.since) if args.since else None
        rows = store.list(limit=args.limit, plugin=args.plugin, type=args.type, run_id=args.run, since=since,
                          resolved=args.all)
        if args.json:
            print(json.dumps(rows, indent=2))
            return 0
        for r in rows:
            print(_line(r))
        if not rows:
            filtered = any((args.plugin, args.type, args.run, args.since))
            print("no errors match these filters" if filtered else _nothing(store, args.all))
    return 0


def _line(r: dict[str, Any]) -> str:
    run = (r["run_id"] or "-")[:RUN_ID_SHOWN]
    step = f"step {r['step']}" if r["step"] is not None else "-"
    resolved = " (resolved)" if r["resolved_at"] else ""
    return (f"#{r['id']} {r['time'][:19]} {run:<{RUN_ID_SHOWN}} {step:<10} {r['type']:<10} "
            f"{r['plugin'] or '-':<20} {r['message']}{resolved}")


def _nothing(store: Any, shown_all: bool) -> str:
    hidden = 0 if shown_all else store.count() - store.count(resolved=False)
    return f"no unresolved errors ({hidden} resolved; --all shows them)" if hidden else "no errors recorded"


def _show(store: Any, target: str, as_json: bool) -> int:
    if not target.lstrip("#").isdigit():
        raise AptError(f"show {target!r}: expected an error id such as 12 (see apt errors list)")
    row = store.get(int(target.lstrip("#")))
    if row is None:
        raise AptError(f"show {target!r}: no error with that id (see apt errors list --all)")
    if as_json:
        print(json.dumps(row, indent=2))
        return 0
    fields = [("time", row["time"]), ("type", row["type"]), ("plugin", row["plugin"] or "-"),
              ("run", row["run_id"] or "-"), ("step", row["step"] if row["step"] is not None else "-"),
              ("resolved", row["resolved_at"] or "no"), ("message", row["message"])]
    print(f"error #{row['id']}")
    for name, value in fields:
        print(f"  {name + ':':<12}{value}")
    for key, value in sorted(row["context"].items()):
        print(f"  {key + ':':<12}{value}")
    if row["traceback"]:
        print()
        print(row["traceback"].rstrip())
    return 0
