"""`apt market ...`: the apt CLI hands `argv` to `main` through the `apt.commands` entry point.

Failures print one line, `apt market: error: ...`, that says what to do next; exit 2 means the
input was wrong, 1 means the server refused or could not be reached.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from apt.home import apt_home

from .apx.errors import ApxError
from .apx.pack import pack
from .apx.signing import load_signing_key, parse_public_key
from .client.config import ClientConfig
from .client.errors import InstallError, MarketClientError, UsageError
from .client.http import MarketClient
from .resolver import ResolutionError

if TYPE_CHECKING:
    from .database import Database
    from .server.keys import KeyStore

__all__ = ["main"]

PROG = "apt market"
_SERVER_EXTRA = "the marketplace server is not installed here; pip install 'apt-marketplace[server]'"


class _UsageError(Exception):
    """Wrong input from the user: reported in one line with exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _UsageError(f"{message} (see '{self.prog} --help')")


def _fail(message: str, code: int) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return code


def _client_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", help="marketplace URL (env APT_MARKET_URL, or url in $APT_HOME/market.toml)")
    p.add_argument("--token", help="API key (env APT_MARKET_TOKEN, or token in $APT_HOME/market.toml)")


def _db_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", type=Path, help="server data directory (holds market.db and blobs/)")
    p.add_argument("--database-url", help="SQLAlchemy URL of the server database (default sqlite in --data-dir)")


def _parser() -> _Parser:
    parser = _Parser(prog=PROG, description="Find, publish and serve APT plugins.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("serve", help="run the marketplace server")
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--database-url")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--max-upload-bytes", type=int, default=64 << 20)
    p.add_argument("--checks", choices=["sandbox", "static", "off"], default="sandbox",
                   help="what a release must pass before it is published (default: every check, sandbox included)")
    p.add_argument("--check-workers", type=int, default=2, help="background check workers (default 2)")
    p.add_argument("--with-first-party", action="store_true",
                   help="serve apt-core and publish the first-party plugins, built from this environment's sources")

    keys = sub.add_parser("keys", help="manage API keys on the server (run where the database is)")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    p = keys_sub.add_parser("create", help="create an API key scoped to packages; printed once")
    p.add_argument("--package", action="append", required=True, help="package the key may publish (repeatable)")
    p.add_argument("--label", default="")
    p.add_argument("--owner", help="publisher the key speaks for; an existing project only takes keys of its owner "
                                   "(default: a new owner)")
    p.add_argument("--expires", default="90d", help="lifetime such as 90d, 12h or 4w (default 90d, at most 366d)")
    _db_args(p)
    p = keys_sub.add_parser("list", help="every key: id, owner, scope, expiry, state, last use")
    p.add_argument("--json", action="store_true")
    _db_args(p)
    p = keys_sub.add_parser("revoke", help="revoke a key by its id (the part after aptm_)")
    p.add_argument("key_id")
    _db_args(p)
    p = keys_sub.add_parser("publisher", help="require archives of a package to be signed by an Ed25519 key")
    p.add_argument("--package", required=True)
    p.add_argument("--public-key", required=True, help="base64 raw Ed25519 public key, or 'none' to remove")
    _db_args(p)

    p = sub.add_parser("audit", help="the server's audit log, newest first (run where the database is)")
    p.add_argument("--package")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--json", action="store_true")
    _db_args(p)

    p = sub.add_parser("review", help="projects held because their name looks like another owner's project")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--approve", metavar="NAME")
    group.add_argument("--reject", metavar="NAME")
    p.add_argument("--checks", choices=["sandbox", "static", "off"], default="sandbox",
                   help="the server's --checks: approved releases go to quarantine unless it is off")
    _db_args(p)

    p = sub.add_parser("gc", help="remove blobs no release names and spool files of dead uploads")
    p.add_argument("--grace", type=float, default=3600.0, help="only files older than this many seconds (default 3600)")
    _db_args(p)

    p = sub.add_parser("check", help="run every publish check of the server locally and print pass/fail")
    p.add_argument("target", type=Path, metavar="DIR_OR_APX")
    p.add_argument("--no-sandbox", action="store_true", help="skip importing and self-testing the providers")
    p.add_argument("--no-build-isolation", action="store_true", help="when packing DIR, use this environment's backend")
    _client_args(p)

    p = sub.add_parser("pack", help="build a .apx archive from a plugin project")
    p.add_argument("project", type=Path)
    p.add_argument("--out", type=Path, default=None, help="output directory (default: PROJECT/dist)")
    p.add_argument("--sign", type=Path, help="PEM Ed25519 private key to sign the manifest with")
    p.add_argument("--no-build-isolation", action="store_true", help="build with the current environment's backend")

    p = sub.add_parser("publish", help="upload a .apx archive")
    p.add_argument("archive", type=Path)
    _client_args(p)

    p = sub.add_parser("search", help="search plugins")
    p.add_argument("query", nargs="?", default="")
    p.add_argument("--kind")
    p.add_argument("--sort", choices=["relevance", "downloads", "rating", "name"], default="relevance")
    p.add_argument("--json", action="store_true")
    _client_args(p)

    p = sub.add_parser("info", help="show a plugin and its releases")
    p.add_argument("name")
    p.add_argument("--all", action="store_true", help="with the owner's key: also quarantined, failed and held releases")
    p.add_argument("--json", action="store_true")
    _client_args(p)

    for name, helptext in (("yank", "mark a release as yanked"), ("unyank", "undo a yank")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("name")
        p.add_argument("version")
        if name == "yank":
            p.add_argument("--reason", required=True)
        _client_args(p)

    p = sub.add_parser("install", help="resolve, download, validate in the sandbox and pip-install a plugin")
    p.add_argument("requirement", metavar="NAME[@RANGE]")
    _client_args(p)

    p = sub.add_parser("upgrade", help="move an installed plugin to the newest allowed version")
    p.add_argument("requirement", metavar="NAME[@RANGE]")
    _client_args(p)

    p = sub.add_parser("rollback", help="restore an earlier version and its dependencies from the cache")
    p.add_argument("name")
    p.add_argument("--to", metavar="VERSION", help="the version to restore (default: the one before the current)")
    _client_args(p)

    p = sub.add_parser("uninstall", help="remove a plugin (and dependencies nothing else needs); rollback-able")
    p.add_argument("name")

    p = sub.add_parser("outdated", help="installed plugins with current, wanted and latest versions; exit 1 if any is behind")
    p.add_argument("--json", action="store_true")
    _client_args(p)

    p = sub.add_parser("list", help="plugins installed here with 'apt market install'")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("history", help="every install, upgrade and rollback in this environment")
    p.add_argument("name", nargs="?")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("resolve", help="resolve NAME[@RANGE] requirements to pinned versions")
    p.add_argument("requirements", nargs="+", metavar="NAME[@RANGE]")
    p.add_argument("--core", help="apt-core version to resolve for")
    p.add_argument("--json", action="store_true")
    _client_args(p)
    _trust_parsers(sub)
    return parser


def _server_db(args: argparse.Namespace) -> tuple[Database, Path]:
    """The server's database and data directory, for the admin commands that run beside it."""
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError

    from .database import Database
    from .server.models import Base
    from .server.settings import Settings
    from .server.upgrade import add_missing_columns

    if args.data_dir is None and args.database_url is None:
        raise _UsageError(f"give --data-dir (or --database-url) of the server for '{args.command}'")
    settings = Settings(data_dir=args.data_dir or apt_home() / "market-server", database_url=args.database_url)
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        db = Database(settings.db_url)
        db.create_all(Base.metadata)
        add_missing_columns(db.engine, Base.metadata)
    except (ArgumentError, SQLAlchemyError) as exc:
        raise _UsageError(f"cannot open the server database: {str(exc).splitlines()[0]}; check --data-dir/--database-url") from None
    return db, settings.data_dir


def _key_store(args: argparse.Namespace) -> KeyStore:
    from .server.keys import KeyStore

    return KeyStore(_server_db(args)[0])


def _serve(args: argparse.Namespace) -> int:
    """Needs the [server] extra, which a client-only install lacks: say so in one line."""
    if not all(importlib.util.find_spec(m) is not None for m in ("fastapi", "uvicorn")):
        return _fail(_SERVER_EXTRA, 1)
    import uvicorn

    from .server.app import create_app
    from .server.settings import Settings

    if not 0 < args.port < 65536:
        raise _UsageError(f"--port {args.port} is not a TCP port")
    if args.check_workers < 1:
        raise _UsageError("--check-workers must be at least 1")
    settings = Settings(data_dir=args.data_dir, database_url=args.database_url, max_upload_bytes=args.max_upload_bytes,
                        checks=args.checks, check_workers=args.check_workers)
    app = create_app(settings)
    if args.with_first_party:
        from .server.first_party import serve_first_party

        try:
            serve_first_party(app.state.catalog, lambda line: print(line, file=sys.stderr, flush=True))
        except RuntimeError as exc:
            return _fail(str(exc), 1)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0


def _keys(args: argparse.Namespace) -> int:
    from .server.keys import parse_expiry

    keys = _key_store(args)
    try:
        if args.keys_command == "create":
            try:
                new = keys.create(args.package, args.label, args.owner, parse_expiry(args.expires))
            except ValueError as exc:
                raise _UsageError(str(exc)) from None
            for warning in new.warnings:
                print(f"{PROG}: warning: {warning}", file=sys.stderr)
            print(new.token)
            print(f"key {new.key_id} for owner {new.owner}, expires {new.expires_at:%Y-%m-%d %H:%M}Z; "
                  "store it now: only its hash is kept on the server", file=sys.stderr)
        elif args.keys_command == "list":
            rows = keys.listing()
            if args.json:
                print(json.dumps(rows, indent=2))
            for r in [] if args.json else rows:
                used = f"last used {r['last_used_at'][:16]} from {r['last_used_from']}" if r["last_used_at"] else "never used"
                print(f"{r['key_id']}  {r['state']:<8} {r['owner']:<20} expires {(r['expires_at'] or 'never')[:10]}  "
                      f"{', '.join(r['packages'])}  {used}" + (f"  ({r['label']})" if r["label"] else ""))
        elif args.keys_command == "revoke":
            try:
                keys.revoke(args.key_id)
            except ValueError as exc:
                raise _UsageError(str(exc)) from None
            print(f"key {args.key_id} revoked")
        else:
            key = None if args.public_key.lower() == "none" else args.public_key
            if key is not None:
                parse_public_key(key)
            keys.set_publisher_key(args.package, key)
            print(f"{args.package}: publisher key {'removed' if key is None else 'registered'}")
    finally:
        keys.db.dispose()
    return 0


def _admin(args: argparse.Namespace) -> int:
    """audit, review and gc: read or change the server's own database and blob store."""
    db, data_dir = _server_db(args)
    try:
        if args.command == "audit":
            from .server.audit import read_audit

            if not 0 < args.limit <= 10_000:
                raise _UsageError("--limit must be between 1 and 10000")
            rows = read_audit(db, args.package, args.limit)
            if args.json:
                print(json.dumps(rows, indent=2))
            for e in [] if args.json else rows:
                what = " ".join(x for x in (e["package"], e["version"]) if x)
                print(f"{e['at'][:19]}  {e['action']:<14} {what:<32} key {e['key_id'] or '-'} ({e['owner'] or '-'}) "
                      f"from {e['address'] or '-'}  {e['detail']}".rstrip())
        elif args.command == "review":
            from .server import review

            if args.approve or args.reject:
                try:
                    if args.approve:
                        review.approve(db, args.approve, "published" if args.checks == "off" else "quarantined")
                    else:
                        review.reject(db, args.reject)
                except ValueError as exc:
                    raise _UsageError(str(exc)) from None
                print(f"{args.approve or args.reject} {'approved' if args.approve else 'rejected'}")
            else:
                held = review.held_projects(db)
                if not held:
                    print("nothing is held for review")
                for h in held:
                    print(f"{h['name']} (owner {h['owner']}, releases {', '.join(h['releases']) or '-'}): {h['reason']}")
        else:
            from .server.blobs import BlobStore
            from .server.gc import collect

            report = collect(db, BlobStore(data_dir / "blobs"), args.grace)
            print(f"removed {report.blobs_removed} orphan blob(s) ({report.blob_bytes} bytes) and "
                  f"{report.spool_removed} stale spool file(s) ({report.spool_bytes} bytes)")
    finally:
        db.dispose()
    return 0


def _check(args: argparse.Namespace) -> int:
    """The server's publish checks, run here; exit 1 when any fails."""
    import tempfile

    from .apx.reader import read_apx
    from .checks import Check, run_checks
    from .client.http import HttpCatalogue

    def show(c: Check) -> None:
        print(f"{'pass' if c.ok else 'FAIL'}  {c.name}: {c.detail}", flush=True)

    with tempfile.TemporaryDirectory(prefix="apt-check-") as tmp:
        if args.target.is_dir():
            archive = pack(args.target, Path(tmp), build_isolation=not args.no_build_isolation)
        elif args.target.is_file():
            archive = args.target
        else:
            raise _UsageError(f"{args.target} is neither a plugin project directory nor a .apx archive")
        try:
            apx = read_apx(archive)
        except ApxError as exc:
            show(Check("archive", False, str(exc)))
            print("0 passed, 1 failed")
            return 1
        opened = Check("archive", True, f"{apx.manifest.canonical_name} {apx.manifest.version}: structure, hashes and limits")
        show(opened)
        config = ClientConfig.load(args.url, args.token)
        with MarketClient(config.url, config.token) as client:
            results = [opened, *run_checks(apx, archive, HttpCatalogue(client), not args.no_sandbox, show)]
    failed = [c for c in results if not c.ok]
    print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


def _pack(args: argparse.Namespace) -> int:
    if not args.project.is_dir():
        raise _UsageError(f"{args.project} is not a directory; pass the plugin project that holds pyproject.toml")
    key = load_signing_key(args.sign) if args.sign else None
    out = pack(args.project, args.out or args.project / "dist", build_isolation=not args.no_build_isolation, signing_key=key)
    print(out)
    return 0


def _print_release_table(releases: list[dict[str, Any]]) -> None:
    for r in releases:
        flag = f"  yanked: {r['yank_reason'] or 'no reason given'}" if r["yanked"] else ""
        if r.get("status", "published") != "published":
            flag += f"  {r['status'].upper()}" + (f": {r['status_reason']}" if r.get("status_reason") else "")
        requires = ", ".join(f"{k} {v}" for k, v in r["requires"].items()) or "-"
        print(f"  {r['version']:<16} core {r['core']:<12} requires {requires}{flag}")


def _split_requirement(text: str) -> tuple[str, str | None]:
    name, sep, rng = text.partition("@")
    if not name or (sep and not rng):
        raise _UsageError(f"{text!r} is not NAME[@RANGE], e.g. apt-plugin-moe@^1.0")
    return name, rng or None


def _say(line: str) -> None:
    print(line, flush=True)


def _local_command(args: argparse.Namespace) -> int:
    """install/upgrade/rollback/list/history act on the environment this interpreter runs in."""
    from .client.install import LocalMarket

    def client() -> MarketClient:
        config = ClientConfig.load(args.url, args.token)
        return MarketClient(config.url, config.token)

    market = LocalMarket(apt_home(), client if hasattr(args, "url") else None, say=_say)
    try:
        if args.command in ("install", "upgrade"):
            name, rng = _split_requirement(args.requirement)
            (market.install if args.command == "install" else market.upgrade)(name, rng)
        elif args.command == "rollback":
            market.rollback(args.name, args.to)
        elif args.command == "uninstall":
            market.uninstall(args.name)
        elif args.command == "outdated":
            rows = market.outdated()
            if args.json:
                print(json.dumps(rows, indent=2))
            elif not rows:
                print("no plugins installed with 'apt market install' in this environment")
            else:
                print(f"{'package':<32} {'current':<12} {'wanted':<12} {'latest':<12}")
            for r in [] if args.json else rows:
                flag = f"  current is yanked: {r['yank_reason'] or 'no reason given'}" if r["yanked"] else ""
                print(f"{r['name']:<32} {r['current']:<12} {r['wanted'] or '-':<12} {r['latest'] or '-':<12}{flag}")
            return 1 if any(r["outdated"] or r["yanked"] for r in rows) else 0
        elif args.command == "list":
            rows = market.listing()
            if args.json:
                print(json.dumps(rows, indent=2))
            elif not rows:
                print("no plugins installed with 'apt market install' in this environment")
            for r in [] if args.json else rows:
                kind = "requested" + (f" {r['requested']}" if r["requested"] not in ("", "*") else "") if r["direct"] else "dependency"
                print(f"{r['name']:<32} {r['version']:<12} {kind:<20} {', '.join(r['provides']) or '-':<28} {r['status']}")
            for t in market.pending():
                print(f"{PROG}: warning: transaction {t.id} ({t.action} {t.package} at {t.at:%Y-%m-%d %H:%M:%S}) "
                      "was interrupted; the environment may differ from this list", file=sys.stderr)
        else:
            rows = market.history(args.name)
            if args.json:
                print(json.dumps(rows, indent=2))
            elif not rows:
                print("no history")
            for h in [] if args.json else rows:
                moved = f"{h['from'] or '(none)'} -> {h['to'] or '(none)'}"
                print(f"#{h['id']:<4} {h['at']}  {h['user']:<12} {h['action']:<8} {h['package']} {moved}  [{h['status']}]"
                      f"  set: {', '.join(f'{n} {v}' for n, v in h['resolved'].items())}")
    finally:
        market.close()
    return 0


def _client_command(args: argparse.Namespace) -> int:
    config = ClientConfig.load(args.url, args.token)
    with MarketClient(config.url, config.token) as client:
        if args.command == "publish":
            if not args.archive.is_file():
                raise _UsageError(f"{args.archive} does not exist; build one with 'apt market pack DIR'")
            body, created = client.publish(args.archive)
            status = body.get("status", "published")
            if not created:
                state = "already published (identical archive)" if status == "published" else f"already uploaded (identical archive), {status}"
            elif status == "quarantined":
                state = "uploaded and quarantined until the publish checks pass ('apt market info NAME --all' shows the verdict)"
            elif status == "held":
                state = f"held for review: {body.get('status_reason')}"
            else:
                state = "published"
            print(f"{body['name']} {body['version']} {state} sha256={body['sha256']}")
        elif args.command == "search":
            result = client.search(args.query, args.kind, args.sort)
            if args.json:
                print(json.dumps(result, indent=2))
            elif not result["results"]:
                print("no plugins found")
            for hit in [] if args.json else result["results"]:
                rating = f"{hit['rating']:.1f}*" if hit["rating"] is not None else "-"
                print(f"{hit['name']:<32} {hit['version']:<12} {hit['downloads']:>7} dl  {rating:>5}  {', '.join(hit['provides'])}  {hit['summary']}")
        elif args.command == "info":
            info = client.package(args.name, owner_view=args.all)
            if args.json:
                print(json.dumps(info, indent=2))
            else:
                rating = f"{info['rating']:.1f} ({info['rating_count']})" if info["rating"] is not None else "unrated"
                print(f"{info['name']} {info['latest']}: {info['summary']}")
                print(f"downloads {info['downloads']}, rating {rating}")
                _print_release_table(info["releases"])
        elif args.command == "yank":
            r = client.yank(args.name, args.version, args.reason)
            print(f"{r['name']} {r['version']} yanked: {r['yank_reason']}")
        elif args.command == "unyank":
            r = client.unyank(args.name, args.version)
            print(f"{r['name']} {r['version']} is no longer yanked")
        elif args.command == "resolve":
            requirements: dict[str, str] = {}
            for item in args.requirements:
                name, _, rng = item.partition("@")
                if not name:
                    raise _UsageError(f"{item!r} is not NAME[@RANGE]")
                requirements[name] = rng or "*"
            try:
                resolution = client.resolve(requirements, args.core)
            except ValueError as exc:
                raise _UsageError(str(exc)) from None
            pins = resolution.pins()
            print(json.dumps(pins, indent=2) if args.json else "\n".join(f"{n} {v}" for n, v in pins.items()))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = _parser().parse_args(argv)
        if args.command == "serve":
            return _serve(args)
        if args.command == "keys":
            return _keys(args)
        if args.command == "pack":
            return _pack(args)
        if args.command in ("audit", "review", "gc"):
            return _admin(args)
        if args.command == "check":
            return _check(args)
        if args.command in ("trust", "untrust", "trusted"):
            return _trust(args)
        if args.command in ("install", "upgrade", "rollback", "uninstall", "outdated", "list", "history"):
            return _local_command(args)
        return _client_command(args)
    except SystemExit as exc:
        return int(exc.code or 0) if isinstance(exc.code, int) or exc.code is None else 2
    except _UsageError as exc:
        return _fail(str(exc), 2)
    except UsageError as exc:
        return _fail(str(exc), 2)
    except InstallError as exc:
        return _fail(str(exc), 1)
    except ApxError as exc:
        return _fail(str(exc).replace("\n", " | "), 2)
    except ResolutionError as exc:
        print(f"{PROG}: error: no set of plugin versions satisfies the request", file=sys.stderr)
        print(exc.explanation, file=sys.stderr)
        return 1
    except MarketClientError as exc:
        if exc.status == 0 and exc.code in ("no_token", "bad_config"):
            return _fail(exc.detail, 2)
        where = f" ({exc.status} {exc.code})" if exc.status else ""
        return _fail(f"{exc.detail}{where}", 1)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except OSError as exc:
        return _fail(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), 2)


def _trust_parsers(sub: Any) -> None:
    p = sub.add_parser("trust", help="let a plugin distribution run in-process (untrusted ones run in apt-sandbox)")
    p.add_argument("name", help="distribution name, as 'apt plugin list' shows it")
    p = sub.add_parser("untrust", help="send a distribution's providers back to apt-sandbox")
    p.add_argument("name")
    p = sub.add_parser("trusted", help="distributions that run in-process: first-party and marked trusted")
    p.add_argument("--json", action="store_true")


def _trust(args: argparse.Namespace) -> int:
    """Trust is by distribution, the unit ``apt market install`` installs and a provider's metadata names."""
    from apt.errors import AptError
    from apt.trust import FIRST_PARTY, TrustStore, canonical, first_party

    store = TrustStore()
    try:
        if args.command == "trusted":
            marked = store.names()
            if args.json:
                print(json.dumps({"first_party": sorted(FIRST_PARTY), "trusted": marked}))
            else:
                for name in marked:
                    print(f"{name}  (marked trusted)")
                for name in sorted(FIRST_PARTY):
                    print(f"{name}  (first-party)")
            return 0
        name = canonical(args.name)
        if first_party(name):
            return _fail(f"{name} is first-party and always trusted", 2)
        if args.command == "trust":
            changed = store.add(name)
            print(f"trusted {name}: its providers and hook plugins now run in-process"
                  + ("" if changed else " (it already was)"))
        else:
            changed = store.remove(name)
            print(f"untrusted {name}: its providers and hook plugins now run only inside apt-sandbox"
                  + ("" if changed else " (it was not marked trusted)"))
        return 0
    except AptError as exc:
        return _fail(str(exc), exc.exit_code)
