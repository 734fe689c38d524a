"""``apt plugin list|info|new``: what providers are installed and how to configure them, and a new one.

Imports provider classes (torch-free by contract) to report broken ones; never imports torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from apt import config as cfg
from apt.cli import ArgumentParser
from apt.errors import AptError
from apt.providers import KINDS
from apt.registry import ProviderInfo, default_registry
from apt.trust import TrustStore, is_trusted


def run(command: str, argv: Sequence[str]) -> int:
    if command == "plugin":
        p = ArgumentParser(prog="apt plugin", description="installed providers")
        sub = p.add_subparsers(dest="action", required=True)
        _list_args(sub.add_parser("list", help="every provider with its status"))
        _info_args(sub.add_parser("info", help="one provider's details and config fields"))
        new = sub.add_parser("new", help="scaffold a provider package that passes its own tests")
        new.add_argument("kind", choices=KINDS)
        new.add_argument("name", help="provider name, a lower-case identifier (the profile key model.KIND=NAME)")
        new.add_argument("--dir", type=Path, help="folder to create (default ./apt-plugin-NAME)")
        args = p.parse_args(argv)
        if args.action == "new":
            return scaffold(args)
    else:
        p = ArgumentParser(prog=f"apt {command}")
        (_list_args if command == "plugin-list" else _info_args)(p)
        args = p.parse_args(argv)
        args.action = command.removeprefix("plugin-")
    return list_providers(args) if args.action == "list" else info(args)


def _list_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kind", choices=KINDS, help="only this kind")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _info_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("kind", choices=KINDS)
    p.add_argument("name")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def describe(info: ProviderInfo, store: TrustStore) -> dict[str, Any]:
    """A provider's listing record; an untrusted distribution's code is never imported to make it."""
    registry = default_registry()
    record: dict[str, Any] = {"kind": info.kind, "name": info.name, "version": info.version,
                              "distribution": info.distribution, "default": info.default,
                              "entry_point": info.value, "status": "ok", "reason": None, "config": []}
    if not is_trusted(info.distribution, store):
        record["status"] = "untrusted"
        record["reason"] = (f"not imported here: {info.distribution} runs only inside apt-sandbox "
                            f"(apt market trust {info.distribution} to inspect it in this process)")
        return record
    problem = registry.problem(info)
    if problem is not None:
        record["status"], record["reason"] = "broken", problem
    else:
        cls = registry.load(info.kind, info.name)
        record["summary"] = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        record["switch"] = cls.switch
        record["config"] = [{"name": f.name, "type": f.type, "default": _default(f.default), "doc": f.doc}
                            for f in cfg.describe(cls.Config)]
    return record


def _default(value: Any) -> Any:
    return None if value is dataclasses.MISSING else value


def list_providers(args: argparse.Namespace) -> int:
    store = TrustStore()
    records = [describe(i, store) for i in default_registry().infos(args.kind)]
    if args.json:
        print(json.dumps(records, indent=2))
        return 0
    if not records:
        print("no providers installed" + (f" of kind {args.kind}" if args.kind else ""))
        return 0
    rows = [("KIND", "NAME", "VERSION", "DISTRIBUTION", "DEFAULT", "STATUS", "CONFIG")]
    for r in records:
        config = " ".join(f"{c['name']}={_show(c['default'])}" for c in r["config"])
        status = "ok" if r["status"] == "ok" else f"{r['status']}: {r['reason']}"
        rows.append((r["kind"], r["name"], r["version"], r["distribution"], "yes" if r["default"] else "",
                     status, config if r["status"] == "ok" else ""))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1])
    return 0


def info(args: argparse.Namespace) -> int:
    registry = default_registry()
    found = registry.info(args.kind, args.name)
    if found is None:
        known = ", ".join(i.name for i in registry.infos(args.kind)) or "none"
        raise AptError(f"no {args.kind} provider named {args.name!r} is installed (installed: {known}); "
                       f"see apt plugin list")
    record = describe(found, TrustStore())
    code = 1 if record["status"] == "broken" else 0
    if args.json:
        print(json.dumps(record, indent=2))
        return code
    print(f"{record['kind']}.{record['name']}  {record['distribution']} {record['version']}"
          + ("  (default)" if record["default"] else ""))
    print(f"entry point: {record['entry_point']}")
    if record["status"] != "ok":
        print(f"status: {record['status']}: {record['reason']}")
        return code
    if record["summary"]:
        print(record["summary"])
    if record["switch"]:
        print(f"curriculum switch: schedules.enable_{record['switch']}_at_epoch")
    if record["config"]:
        print(f"config (profile key providers.{record['kind']}.{record['name']}):")
        for c in record["config"]:
            doc = f"  {c['doc']}" if c["doc"] else ""
            print(f"  {c['name']}: {c['type']} = {_show(c['default'])}{doc}")
    else:
        print("config: none")
    return 0


def scaffold(args: argparse.Namespace) -> int:
    from apt.scaffold import Names, write

    names = Names(args.kind, args.name)
    folder = args.dir or Path(names.distribution)
    files = write(args.kind, args.name, folder)
    print(f"wrote {names.distribution} ({args.kind}.{args.name}) to {folder}:")
    for path in files:
        print(f"  {path.relative_to(folder)}")
    print(f"next: cd {folder} && pip install -e '.[test]' && pytest && apt plugin info {args.kind} {args.name}")
    return 0


def _show(value: Any) -> str:
    return "null" if value is None else json.dumps(value) if isinstance(value, str) else str(value)
