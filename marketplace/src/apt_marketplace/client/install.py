"""`apt market install | upgrade | rollback | list | history`: plugins into the running environment.

Install and upgrade resolve with the marketplace's own resolver against the apt-core that is
installed here, download each archive and check its sha256 against the release record, read it
with the same suspicious reader the server uses, unpack the wheels into a scratch directory and
validate every changed plugin in the sandbox (import, provider discovery, `apt_self_test`), and
only then pip-install the wheels (`--no-deps --no-index`, files only) and record the change.

A plugin that fails validation is refused before anything is written: the environment, the
state database and the download cache stay as they were. Every archive that is installed is
kept in the cache, so rollback needs no network: it reinstalls a set recorded in the history.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import importlib.metadata as md
import platform
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from email.parser import BytesParser
from pathlib import Path
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from apt_sandbox import Limits as SandboxLimits

from ..apx.errors import ApxError
from ..apx.reader import Apx, read_apx
from ..resolver import ResolutionError
from ..semver import InvalidRange, InvalidVersion, from_pep440, parse_range, parse_version, to_pep440
from .cache import ArchiveCache
from .errors import InstallError, MarketClientError, UsageError, ValidationFailed
from .http import MarketClient
from .sandboxing import last_line, unpack_wheel, validate_in_sandbox
from .state import InstalledRow, Pin, StateDB, TransactionRow

__all__ = ["LocalMarket", "Outcome", "core_version", "environment"]



def environment() -> str:
    """The key of this environment's rows in the shared state database."""
    return str(Path(sys.prefix).resolve())


def core_version() -> str:
    """The installed apt-core as semver: the core every candidate's `core` range must admit."""
    try:
        return str(from_pep440(md.version("apt-core")))
    except md.PackageNotFoundError:
        raise InstallError("apt-core is not installed in this environment; plugins run on it (pip install apt-core)") from None
    except InvalidVersion as exc:
        raise InstallError(f"the installed apt-core has a version that is not semver: {exc}") from None


def _env_version(name: str) -> str | None:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def _same_version(semver: str, pep440: str | None) -> bool:
    if pep440 is None:
        return False
    try:
        return from_pep440(pep440) == parse_version(semver)
    except InvalidVersion:
        return False


@dataclass(frozen=True)
class _Fetched:
    pin: Pin
    data: bytes
    apx: Apx


@dataclass(frozen=True)
class Outcome:
    """What a command did, for the CLI to print."""

    action: str
    package: str
    from_version: str | None
    to_version: str | None
    changes: list[dict[str, Any]]
    transaction_id: int | None


class LocalMarket:
    """The plugins `apt market` manages in the running Python environment."""

    def __init__(
        self,
        home: Path,
        client_factory: Callable[[], MarketClient] | None = None,
        *,
        say: Callable[[str], None] = print,
        sandbox_limits: SandboxLimits | None = None,
    ) -> None:
        self.root = Path(home) / "market"
        self.root.mkdir(parents=True, exist_ok=True)
        self.state = StateDB(self.root / "state.db")
        self.cache = ArchiveCache(self.root / "cache")
        self.client_factory = client_factory
        self.say = say
        self.sandbox_limits = sandbox_limits
        self.env = environment()

    def close(self) -> None:
        self.state.close()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One change at a time per APT_HOME: two pip runs into one environment would interleave."""
        with open(self.root / "lock", "a+b") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def _client(self) -> MarketClient:
        if self.client_factory is None:
            raise InstallError("no marketplace is configured; pass --url or set APT_MARKET_URL")
        return self.client_factory()

    # --- install and upgrade --------------------------------------------------------------

    def install(self, name: str, range_text: str | None) -> Outcome:
        return self._install_or_upgrade("install", name, range_text)

    def upgrade(self, name: str, range_text: str | None) -> Outcome:
        cname = canonicalize_name(name)
        if cname not in self.state.installed(self.env):
            raise UsageError(f"{cname} was not installed with 'apt market install'; install it first")
        return self._install_or_upgrade("upgrade", name, range_text)

    def _install_or_upgrade(self, action: str, name: str, range_text: str | None) -> Outcome:
        cname = canonicalize_name(name)
        wanted = range_text or "*"
        try:
            parse_range(wanted)
        except InvalidRange as exc:
            raise UsageError(f"{name}@{wanted}: {exc}") from None
        core = core_version()
        with self._locked():
            installed = self.state.installed(self.env)
            # Every other plugin the user asked for stays at its version, so its constraints on
            # shared dependencies hold; the target moves to the newest release they all allow.
            requirements: dict[str, str] = {cname: wanted}
            for other, row in installed.items():
                if row.direct and other != cname:
                    requirements[other] = row.version
            with self._client() as client:
                resolution = client.resolve(requirements, core)
                pins: dict[str, Pin] = {}
                infos: dict[str, dict[str, Any]] = {}
                for pname in resolution.order:
                    info = client.release(pname, str(resolution.packages[pname].version))
                    infos[pname] = info
                    pins[pname] = Pin(pname, info["version"], info["sha256"], info["requires"], info["provides"])
                self.say("resolved: " + ", ".join(f"{n} {p.version}" for n, p in pins.items()) + f" (apt-core {core})")
                direct = {n: r.requested or "*" for n, r in installed.items() if r.direct}
                direct[cname] = wanted
                new_state = {n: _pin_of(r) for n, r in installed.items()}
                new_state.update(pins)
                changed = self._changed(pins, installed)
                current = installed.get(cname)
                if action == "upgrade":
                    for line in self._skipped(client, cname, pins[cname].version, wanted, requirements, core):
                        self.say(line)
                if not changed and current is not None and current.direct:
                    why = "the newest version allowed" if action == "upgrade" else "installed"
                    self.say(f"{cname} {current.version} is already {why}; nothing to do")
                    return Outcome(action, cname, current.version, current.version, [], None)
                fetched = {n: self._fetch(pins[n], client, infos[n]) for n in changed}
            return self._apply(action, cname, installed, new_state, direct, fetched, source=client.url, validate_all=True)

    @staticmethod
    def _skipped(
        client: MarketClient, cname: str, chosen: str, wanted: str, requirements: Mapping[str, str], core: str
    ) -> list[str]:
        """Why each release newer than the chosen one was passed over. Releases in quarantine,
        failed or held are shown only to the owner's key, so only the owner hears about them."""
        try:
            releases = client.package(cname, owner_view=client.token is not None)["releases"]
        except MarketClientError:
            releases = client.package(cname)["releases"]
        newer = [r for r in releases if parse_version(r["version"]) > parse_version(chosen)]
        lines = []
        for r in sorted(newer, key=lambda r: parse_version(r["version"])):
            version = parse_version(r["version"])
            status = r.get("status", "published")
            if status != "published":
                reason = f": {r['status_reason']}" if r.get("status_reason") else ""
                why = {"quarantined": "quarantined, its publish checks are still running"}.get(status, f"{status}{reason}")
            elif r["yanked"]:
                why = f"yanked ({r['yank_reason'] or 'no reason given'})"
            elif not parse_range(r["core"]).contains(parse_version(core), include_prerelease=True):
                why = f"needs apt-core {r['core']}, this is {core}"
            elif not parse_range(wanted).contains(version):
                why = f"outside the requested range {wanted}" if wanted != "*" else "a pre-release"
            else:
                others = ", ".join(f"{n} {v}" for n, v in requirements.items() if n != cname)
                why = f"the other installed plugins ({others or 'none'}) rule it out"
            lines.append(f"skipped {cname} {r['version']}: {why}")
        return lines

    # --- uninstall and outdated -----------------------------------------------------------

    def uninstall(self, name: str) -> Outcome:
        """Recorded like any change, so `rollback NAME` restores the plugin from the cache."""
        cname = canonicalize_name(name)
        with self._locked():
            installed = self.state.installed(self.env)
            current = installed.get(cname)
            if current is None:
                raise UsageError(f"{cname} was not installed with 'apt market install', so there is nothing to uninstall")
            direct = {n: r.requested or "*" for n, r in installed.items() if r.direct and n != cname}
            pins = {n: _pin_of(r) for n, r in installed.items()}
            needed_by = sorted(n for n in direct if cname in _closure(pins, {n}))
            if needed_by:
                raise UsageError(f"{', '.join(needed_by)} need{'s' if len(needed_by) == 1 else ''} {cname}; uninstall that first")
            return self._apply("uninstall", cname, installed, pins, direct, {}, source="local", validate_all=False)

    def outdated(self) -> list[dict[str, Any]]:
        """current / wanted (newest the requested range and the other plugins allow) / latest."""
        core = core_version()
        installed = self.state.installed(self.env)
        rows = []
        with self._client() as client:
            for name, row in sorted(installed.items()):
                info = client.package(name)
                current = next((r for r in info["releases"] if r["version"] == row.version), None)
                requirements = {name: row.requested or "*"} if row.direct else {name: "*"}
                requirements.update({n: r.version for n, r in installed.items() if r.direct and n != name})
                try:
                    wanted: str | None = client.resolve(requirements, core).pins()[name]
                except (ResolutionError, ValueError):
                    wanted = None
                rows.append(
                    {
                        "name": name,
                        "current": row.version,
                        "wanted": wanted,
                        "latest": info["latest"],
                        "yanked": bool(current and current["yanked"]),
                        "yank_reason": current["yank_reason"] if current else None,
                        "outdated": info["latest"] is not None and parse_version(info["latest"]) > parse_version(row.version),
                    }
                )
        return rows

    def _changed(self, pins: Mapping[str, Pin], installed: Mapping[str, InstalledRow]) -> list[str]:
        importlib.invalidate_caches()
        out = []
        for name, pin in pins.items():
            row = installed.get(name)
            if row is None or row.sha256 != pin.sha256 or not _same_version(pin.version, _env_version(name)):
                out.append(name)
        return out

    def _fetch(self, pin: Pin, client: MarketClient | None, info: dict[str, Any] | None) -> _Fetched:
        """From the cache when it holds the bytes, else from the marketplace; verified either way."""
        data = self.cache.get(pin.sha256)
        if data is None:
            if client is None:
                raise InstallError(
                    f"the archive of {pin.name} {pin.version} is not in the download cache and no marketplace is reachable"
                )
            try:
                data = client.fetch(info or client.release(pin.name, pin.version))
            except MarketClientError as exc:
                raise InstallError(f"cannot download {pin.name} {pin.version}: {exc.detail}") from None
            if data is None or len(data) == 0:
                raise InstallError(f"the marketplace sent an empty archive for {pin.name} {pin.version}")
            self.say(f"downloaded {pin.name} {pin.version} ({len(data)} bytes, sha256 verified)")
        try:
            apx = read_apx(data)
        except ApxError as exc:
            raise InstallError(f"the archive of {pin.name} {pin.version} is unsafe or damaged: {exc}") from None
        m = apx.manifest
        if m.canonical_name != pin.name or parse_version(m.version) != parse_version(pin.version):
            raise InstallError(f"the archive for {pin.name} {pin.version} holds {m.name} {m.version}")
        if m.python and not SpecifierSet(m.python).contains(platform.python_version(), prereleases=True):
            raise InstallError(f"{pin.name} {pin.version} needs Python {m.python}; this is {platform.python_version()}")
        return _Fetched(pin, data, apx)

    # --- rollback -------------------------------------------------------------------------

    def rollback(self, name: str, to_version: str | None) -> Outcome:
        cname = canonicalize_name(name)
        with self._locked():
            installed = self.state.installed(self.env)
            current = installed.get(cname)
            target = self._rollback_target(cname, current, to_version)
            recorded = {n: Pin.from_dict(n, d) for n, d in target.resolved.items()}
            wanted = _closure(recorded, {cname})
            new_state = {n: _pin_of(r) for n, r in installed.items()}
            new_state.update({n: recorded[n] for n in wanted})
            direct = {n: r.requested or "*" for n, r in installed.items() if r.direct}
            if current is None:
                direct[cname] = "*"
            changed = self._changed({n: recorded[n] for n in sorted(wanted)}, installed)
            fetched = {}
            client: MarketClient | None = None
            try:
                for n in changed:
                    if self.cache.get(recorded[n].sha256) is None and client is None and self.client_factory is not None:
                        client = self.client_factory()
                    fetched[n] = self._fetch(recorded[n], client, None)
            finally:
                if client is not None:
                    client.close()
            self.say(
                f"rolling back {cname} {current.version if current else '(uninstalled)'} -> {recorded[cname].version} "
                f"(the set of transaction {target.id}, {target.action} on {target.at:%Y-%m-%d %H:%M:%S})"
            )
            return self._apply("rollback", cname, installed, new_state, direct, fetched, source="cache", validate_all=False)

    def _rollback_target(self, cname: str, current: InstalledRow | None, to_version: str | None) -> TransactionRow:
        done = [t for t in self.state.history(self.env, cname) if t.status == "done" and cname in t.resolved]
        if current is None and to_version is None:
            if not done:
                raise UsageError(f"{cname} is not installed with 'apt market install' and never was, so there is nothing to roll back")
            return done[-1]
        if to_version is not None:
            try:
                wanted = parse_version(to_version)
            except InvalidVersion as exc:
                raise UsageError(f"--to {to_version}: {exc}") from None
            for t in reversed(done):
                if parse_version(t.resolved[cname]["version"]) == wanted:
                    return t
            seen = sorted({t.resolved[cname]["version"] for t in done}, key=parse_version)
            raise UsageError(f"{cname} {to_version} was never installed here; the history has {', '.join(seen) or 'no versions'}")
        for t in reversed(done):
            if current is None or t.resolved[cname]["sha256"] != current.sha256:
                return t
        version = current.version if current else "(none)"
        raise UsageError(f"{cname} {version} is the only version in the history; there is nothing earlier to restore")

    # --- the common tail: validate, pip, record -------------------------------------------

    def _apply(
        self,
        action: str,
        cname: str,
        installed: Mapping[str, InstalledRow],
        new_state: dict[str, Pin],
        direct: dict[str, str],
        fetched: Mapping[str, _Fetched],
        *,
        source: str,
        validate_all: bool,
    ) -> Outcome:
        needed = _closure(new_state, set(direct))
        orphans = sorted(n for n in new_state if n not in needed)
        for n in orphans:
            del new_state[n]
        index_requirements = self._check_requirements(fetched, new_state)
        self._warn_inconsistent(new_state)
        with tempfile.TemporaryDirectory(prefix="apt-market-") as tmp:
            # The sandbox imports the plugin against this environment, so its ordinary
            # dependencies must be here first; a refusal takes them out again.
            from_index = self._from_index(index_requirements) if index_requirements else []
            try:
                wheels = self._validate(fetched, Path(tmp), validate_all)
            except InstallError:
                if from_index:
                    self._undo_index(from_index)
                raise
            for f in fetched.values():
                self.cache.put(f.data)
                self.state.note_archive(f.pin.sha256, f.pin.name, f.pin.version, len(f.data))
            changes = [
                {"name": n, "from": installed[n].version if n in installed else None, "to": new_state[n].version if n in new_state else None}
                for n in sorted(set(fetched) | set(orphans))
            ] + from_index
            before = installed[cname].version if cname in installed else None
            after = new_state[cname].version if cname in new_state else None
            tid = self.state.begin_change(self.env, action, cname, before, after, source, new_state, changes)
            try:
                if wheels:
                    self._pip(["install", "--no-deps", "--no-index", "--force-reinstall", *map(str, wheels)])
                if orphans:
                    self._pip(["uninstall", "--yes", *orphans])
                self._verify(new_state, orphans)
            except InstallError as exc:
                self.state.fail_change(tid, str(exc))
                raise
            self.state.finish_change(tid, self.env, new_state, orphans, direct)
        for c in changes:
            if c.get("source") == "index":
                self.say(f"from the package index: {c['name']} {c['from'] or '(none)'} -> {c['to']}")
            elif c["to"] is None and c["name"] == cname and action == "uninstall":
                self.say(f"uninstalled {cname} {c['from']} ('apt market rollback {cname}' restores it)")
            elif c["to"] is None:
                self.say(f"removed {c['name']} {c['from']} (no installed plugin needs it any more)")
            else:
                self.say(f"{action}: {c['name']} {c['from'] or '(none)'} -> {c['to']}")
        return Outcome(action, cname, before, after, changes, tid)

    def _check_requirements(self, fetched: Mapping[str, _Fetched], new_state: Mapping[str, Pin]) -> list[Requirement]:
        """pip runs the plugin wheels with --no-deps, so check here what they need: plugins and
        the core must be here already; anything else missing is returned, for the package index."""
        importlib.invalidate_caches()
        from_index: dict[str, Requirement] = {}
        for f in fetched.values():
            for wheel in f.apx.wheels:
                meta = BytesParser().parsebytes(wheel.metadata, headersonly=True)
                for text in meta.get_all("Requires-Dist") or []:
                    try:
                        req = Requirement(str(text))
                    except InvalidRequirement:
                        raise InstallError(f"{wheel.filename} declares an unreadable requirement {text!r}") from None
                    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                        continue
                    dep = canonicalize_name(req.name)
                    if dep in new_state:
                        version: str | None = to_pep440(new_state[dep].version)
                    else:
                        version = _env_version(dep)
                    satisfied = version is not None and (not req.specifier or req.specifier.contains(version, prereleases=True))
                    if satisfied:
                        continue
                    if dep in new_state or dep.startswith("apt-"):
                        # An apt-* name from the public index could be anybody's: plugins come
                        # from the marketplace (the manifest's requires) and the core is installed first.
                        have = f"this environment has {dep} {version}" if version else "it is not installed here"
                        raise InstallError(f"{f.pin.name} {f.pin.version} needs {req}, but {have}; install it first")
                    if dep in from_index:
                        from_index[dep] = Requirement(f"{from_index[dep]},{req.specifier}" if req.specifier else str(from_index[dep]))
                    else:
                        from_index[dep] = Requirement(f"{req.name}{req.specifier}")
        return list(from_index.values())

    def _from_index(self, requirements: Sequence[Requirement]) -> list[dict[str, Any]]:
        """Install the plugins' ordinary dependencies the way pip would (user's index settings,
        dependencies of dependencies included); returns what changed, for the history."""
        before = _distributions()
        self.say("from the package index: " + ", ".join(map(str, requirements)))
        cmd = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--no-input", "--quiet", *map(str, requirements)]
        proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=1800)
        if proc.returncode != 0:
            raise InstallError(f"pip could not install {', '.join(map(str, requirements))}: {last_line(proc.stderr + proc.stdout)}; nothing else was changed")
        after = _distributions()
        return [
            {"name": n, "from": before.get(n), "to": after[n], "source": "index"}
            for n in sorted(after)
            if before.get(n) != after[n]
        ]

    def _undo_index(self, changes: Sequence[dict[str, Any]]) -> None:
        """After a refusal: remove what the index brought in, put back what it replaced."""
        added = [c["name"] for c in changes if c["from"] is None]
        replaced = [f"{c['name']}=={c['from']}" for c in changes if c["from"] is not None]
        if added:
            self._pip(["uninstall", "--yes", *added])
        if replaced:
            cmd = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--no-input", "--quiet", "--no-deps", *replaced]
            subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=1800)

    def _warn_inconsistent(self, new_state: Mapping[str, Pin]) -> None:
        for name, pin in new_state.items():
            for dep, rng in pin.requires.items():
                other = new_state.get(canonicalize_name(dep))
                if other is not None and not parse_range(rng).contains(parse_version(other.version), include_prerelease=True):
                    self.say(f"warning: {name} {pin.version} requires {dep} {rng}, but {other.version} will be installed")

    def _validate(self, fetched: Mapping[str, _Fetched], scratch: Path, validate_all: bool) -> list[Path]:
        """Validate in the sandbox every plugin not validated before; returns the wheel files."""
        site = scratch / "site"
        wheel_dir = scratch / "wheels"
        site.mkdir()
        wheel_dir.mkdir()
        files = []
        for f in fetched.values():
            for wheel in f.apx.wheels:
                unpack_wheel(wheel, site)
                path = wheel_dir / wheel.filename
                path.write_bytes(wheel.data)
                files.append(path)
        todo = [f for f in fetched.values() if validate_all or not _validated(self.state.archive(f.pin.sha256))]
        if not todo:
            return files
        failures = []
        reports: dict[str, dict[str, Any]] = {}
        for f in todo:
            verdict = validate_in_sandbox(site, f.pin.name, self.sandbox_limits)
            if verdict.ok:
                self.say(f"validated {f.pin.name} {f.pin.version} in the sandbox: {verdict.summary}")
                reports[f.pin.sha256] = verdict.record
            else:
                failures.append(f"{f.pin.name} {f.pin.version}: {verdict.summary}")
        if failures:
            raise ValidationFailed("refused, validation failed in the sandbox: " + " | ".join(failures) + "; nothing was installed")
        for f in todo:
            self.state.note_archive(f.pin.sha256, f.pin.name, f.pin.version, len(f.data), reports[f.pin.sha256])
        return files

    def _pip(self, args: Sequence[str]) -> None:
        cmd = [sys.executable, "-m", "pip", *args, "--isolated", "--disable-pip-version-check", "--no-input", "--quiet"]
        proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=1800)
        if proc.returncode != 0:
            raise InstallError(f"pip {args[0]} failed: {last_line(proc.stderr + proc.stdout)}")

    def _verify(self, new_state: Mapping[str, Pin], removed: Sequence[str]) -> None:
        importlib.invalidate_caches()
        for name, pin in new_state.items():
            if not _same_version(pin.version, _env_version(name)):
                raise InstallError(f"after pip ran, {name} is {_env_version(name) or 'missing'} instead of {pin.version}")
        for name in removed:
            if _env_version(name) is not None:
                raise InstallError(f"after pip ran, {name} is still installed")

    # --- reading --------------------------------------------------------------------------

    def listing(self) -> list[dict[str, Any]]:
        """Installed plugins per the state database, each checked against the environment."""
        importlib.invalidate_caches()
        out = []
        for name, row in self.state.installed(self.env).items():
            found = _env_version(name)
            if found is None:
                status = "missing from the environment"
            elif _same_version(row.version, found):
                status = "ok"
            else:
                status = f"environment has {found}"
            out.append(
                {
                    "name": name,
                    "version": row.version,
                    "direct": row.direct,
                    "requested": row.requested,
                    "provides": list(row.provides),
                    "installed_at": row.installed_at.isoformat(timespec="seconds"),
                    "environment_version": found,
                    "status": status,
                }
            )
        return out

    def pending(self) -> list[TransactionRow]:
        return [t for t in self.state.history(self.env) if t.status == "pending"]

    def history(self, name: str | None) -> list[dict[str, Any]]:
        rows = self.state.history(self.env, canonicalize_name(name) if name else None)
        return [
            {
                "id": t.id,
                "action": t.action,
                "package": t.package,
                "from": t.from_version,
                "to": t.to_version,
                "user": t.user,
                "at": t.at.isoformat(timespec="seconds"),
                "status": t.status,
                "source": t.source,
                "resolved": {n: d["version"] for n, d in t.resolved.items()},
                "changes": t.changes,
                "detail": t.detail,
            }
            for t in rows
        ]


def _distributions() -> dict[str, str]:
    importlib.invalidate_caches()
    return {canonicalize_name(d.metadata["Name"] or ""): d.version for d in md.distributions() if d.metadata["Name"]}


def _validated(row: Any) -> bool:
    return row is not None and row.validated_at is not None


def _pin_of(row: InstalledRow) -> Pin:
    return Pin(row.name, row.version, row.sha256, dict(row.requires), list(row.provides))


def _closure(pins: Mapping[str, Pin], roots: set[str]) -> set[str]:
    """The roots and everything they need, transitively, within `pins`."""
    seen: set[str] = set()
    stack = [r for r in roots if r in pins]
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        stack.extend(d for d in (canonicalize_name(x) for x in pins[name].requires) if d in pins and d not in seen)
    return seen
