"""What the marketplace does, independent of HTTP: publish, yank, delete, search, rate, resolve.

Publishing writes blobs first and commits rows last; the uniqueness of (package, version) in
the database is what decides a race between identical or different uploads, not a lock.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from packaging.utils import canonicalize_name
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .apx import Apx, ApxError, read_apx, verify_signature
from .blobs import BlobStore, SpoolFile
from .db import Database
from .errors import MarketError
from .models import (
    ApiKey,
    ApiKeyScope,
    DeletedVersion,
    Dependency,
    Package,
    Provide,
    Rating,
    Release,
    ReleaseFile,
)
from .resolver import ReleaseInfo, ResolutionError, resolve
from .semver import InvalidVersion, Version, parse_version, to_pep440
from .settings import Settings

__all__ = ["KeyInfo", "Registry", "hash_token"]

_TOKEN_PREFIX = "aptm"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class KeyInfo:
    id: int
    key_id: str
    label: str
    scopes: frozenset[str]

    def may_publish(self, name: str) -> bool:
        return canonicalize_name(name) in self.scopes


def _not_found(what: str) -> MarketError:
    return MarketError(404, "not_found", f"{what} does not exist")


def _version_key(text: str) -> tuple[Version, str]:
    try:
        v = parse_version(text)
    except InvalidVersion:
        raise MarketError(404, "not_found", f"{text!r} is not a semver version, so no such release exists") from None
    return v, v.precedence


@functools.lru_cache(maxsize=65536)
def _cached_version(text: str) -> Version:
    """Versions are immutable and repeat across every search; parsing them dominated ranking."""
    return parse_version(text)


def _chunks(ids: Sequence[int], size: int = 500) -> Iterator[list[int]]:
    """IN lists in slices: SQLite caps bound parameters per statement."""
    for start in range(0, len(ids), size):
        yield list(ids[start : start + size])


def _iso(dt: datetime) -> str:
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC).isoformat().replace("+00:00", "Z")


class _DbCatalogue:
    def __init__(self, session: Session) -> None:
        self.session = session

    def releases(self, name: str) -> Sequence[ReleaseInfo]:
        rows = self.session.execute(
            select(Release.id, Release.version, Release.core, Release.yanked)
            .join(Package)
            .where(Package.name == canonicalize_name(name))
        ).all()
        requires: dict[int, dict[str, str]] = {row.id: {} for row in rows}
        if rows:
            for dep in self.session.execute(
                select(Dependency.release_id, Dependency.name, Dependency.range).where(Dependency.release_id.in_(list(requires)))
            ):
                requires[dep.release_id][dep.name] = dep.range
        return [
            ReleaseInfo(name=name, version=parse_version(r.version), requires=requires[r.id], core=r.core, yanked=r.yanked)
            for r in rows
        ]


class Registry:
    def __init__(self, settings: Settings, db: Database, blobs: BlobStore) -> None:
        self.settings = settings
        self.db = db
        self.blobs = blobs

    # --- keys -----------------------------------------------------------------------------

    def create_api_key(self, packages: Sequence[str], label: str = "") -> str:
        """Returns the token; only its hash is stored, so this is the one chance to see it."""
        if not packages:
            raise ValueError("an API key needs at least one package in scope")
        key_id = secrets.token_hex(6)
        token = f"{_TOKEN_PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"
        with self.db.write() as s:
            key = ApiKey(key_id=key_id, key_hash=hash_token(token), label=label)
            key.scopes = [ApiKeyScope(package=canonicalize_name(p)) for p in sorted(set(packages))]
            s.add(key)
        return token

    def authenticate(self, authorization: str | None) -> KeyInfo:
        challenge = {"WWW-Authenticate": "Bearer"}
        if not authorization:
            raise MarketError(401, "unauthorized", "this needs an API key: send 'Authorization: Bearer <key>'", challenge)
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        parts = token.split("_")
        if scheme.lower() != "bearer" or len(parts) < 3 or parts[0] != _TOKEN_PREFIX:
            raise MarketError(401, "unauthorized", "the Authorization header must be 'Bearer aptm_...'", challenge)
        with self.db.read() as s:
            key = s.scalar(select(ApiKey).where(ApiKey.key_id == parts[1]))
            if key is None or key.revoked or not hmac.compare_digest(key.key_hash, hash_token(token)):
                raise MarketError(401, "unauthorized", "the API key is not valid", challenge)
            return KeyInfo(key.id, key.key_id, key.label, frozenset(sc.package for sc in key.scopes))

    def set_publisher_key(self, package: str, public_key: str | None) -> None:
        """Register the Ed25519 key that must sign every future archive of `package`."""
        name = canonicalize_name(package)
        with self.db.write() as s:
            pkg = s.scalar(select(Package).where(Package.name == name))
            if pkg is None:
                pkg = Package(name=name, display_name=package, summary="")
                s.add(pkg)
            pkg.publisher_key = public_key

    # --- publishing -----------------------------------------------------------------------

    def publish(self, spool: SpoolFile, key: KeyInfo) -> tuple[dict[str, Any], bool]:
        """Returns (release, created). An identical archive again is a no-op, not an error."""
        try:
            sha = spool.finish()
            try:
                apx = read_apx(spool.path, self.settings.archive_limits)
            except ApxError as exc:
                raise MarketError(400, "invalid_archive", str(exc)) from None
            m = apx.manifest
            name = m.canonical_name
            if not key.may_publish(name):
                raise MarketError(403, "forbidden", f"this API key may not publish {name}; ask for a key scoped to it")
            _, version_key = _version_key(m.version)
            verdict = self._existing(name, version_key, sha)
            if verdict is not None:
                return verdict
            for _attempt in range(3):
                try:
                    return self._insert(apx, sha, spool, key), True
                except IntegrityError:
                    verdict = self._existing(name, version_key, sha)
                    if verdict is not None:
                        return verdict
            raise MarketError(409, "conflict", f"{name} {m.version} conflicts with a concurrent upload; try again")
        finally:
            spool.discard()

    def _existing(self, name: str, version_key: str, sha: str) -> tuple[dict[str, Any], bool] | None:
        with self.db.read() as s:
            if s.get(DeletedVersion, (name, version_key)) is not None:
                raise MarketError(409, "version_deleted", f"{name} {version_key} was deleted and can never be published again; bump the version")
            release = s.scalar(
                select(Release).join(Package).where(Package.name == name, Release.version_key == version_key)
            )
            if release is None:
                return None
            if release.sha256 == sha:
                return self._release_dict(release, release.package), False
            raise MarketError(409, "version_exists", f"{name} {release.version} exists with different content; publish a new version")

    def _insert(self, apx: Apx, sha: str, spool: SpoolFile, key: KeyInfo) -> dict[str, Any]:
        m = apx.manifest
        name = m.canonical_name
        version = parse_version(m.version)
        with self.db.write() as s:
            pkg = s.scalar(select(Package).where(Package.name == name))
            if pkg is None:
                pkg = Package(name=name, display_name=m.name, summary=m.summary, downloads=0)
                s.add(pkg)
                s.flush()
            if pkg.publisher_key:
                try:
                    verify_signature(apx, pkg.publisher_key)
                except ApxError as exc:
                    raise MarketError(403, "invalid_signature", str(exc)) from None
            if s.get(DeletedVersion, (name, version.precedence)) is not None:
                raise MarketError(409, "version_deleted", f"{name} {version.precedence} was deleted and can never be published again; bump the version")
            existing = s.scalar(select(Release).where(Release.package_id == pkg.id, Release.version_key == version.precedence))
            if existing is not None:
                raise IntegrityError("release exists", None, Exception("duplicate"))
            taken = s.scalars(select(ReleaseFile.filename).where(ReleaseFile.filename.in_([w.filename for w in apx.wheels]))).all()
            if taken:
                raise MarketError(409, "file_exists", f"a wheel named {taken[0]} is already published; PEP 440 spells {m.version} like an existing version")
            release = Release(
                package_id=pkg.id,
                version=m.version,
                version_key=version.precedence,
                summary=m.summary,
                core=m.core,
                python=m.python,
                sandbox=m.sandbox,
                sha256=sha,
                size=spool.size,
                manifest=m.to_dict(),
                signed=apx.signature is not None,
                uploader=key.key_id + (f" ({key.label})" if key.label else ""),
                downloads=0,
                yanked=False,
            )
            release.dependencies = [Dependency(name=canonicalize_name(d), range=r) for d, r in sorted(m.requires.items())]
            release.provides = [Provide(kind=p.split(".", 1)[0], name=p.split(".", 1)[1]) for p in m.provides]
            release.files = [
                ReleaseFile(
                    filename=w.filename,
                    sha256=w.sha256,
                    size=w.size,
                    metadata_sha256=hashlib.sha256(w.metadata).hexdigest(),
                    requires_python=w.requires_python,
                )
                for w in apx.wheels
            ]
            s.add(release)
            s.flush()
            # The unique row is now held by this transaction, so losers of a race never get here
            # and never write blobs; the blobs land before the commit makes the row visible.
            for wheel in apx.wheels:
                self.blobs.put(wheel.data)
                self.blobs.put(wheel.metadata)
            self.blobs.adopt(spool, sha)
            newest = max(parse_version(r.version) for r in s.scalars(select(Release).where(Release.package_id == pkg.id)))
            if newest == version:
                pkg.summary = m.summary
                pkg.display_name = m.name
            return self._release_dict(release, pkg)

    # --- lifecycle ------------------------------------------------------------------------

    def _owned_release(self, s: Session, name: str, version: str, key: KeyInfo) -> Release:
        cname = canonicalize_name(name)
        if not key.may_publish(cname):
            raise MarketError(403, "forbidden", f"this API key is not scoped to {cname}")
        _, vkey = _version_key(version)
        release = s.scalar(select(Release).join(Package).where(Package.name == cname, Release.version_key == vkey))
        if release is None:
            raise _not_found(f"{cname} {version}")
        return release

    def set_yanked(self, name: str, version: str, key: KeyInfo, yanked: bool, reason: str | None) -> dict[str, Any]:
        with self.db.write() as s:
            release = self._owned_release(s, name, version, key)
            release.yanked = yanked
            release.yank_reason = (reason or None) if yanked else None
            s.flush()
            return self._release_dict(release, release.package)

    def delete_release(self, name: str, version: str, key: KeyInfo) -> dict[str, Any]:
        with self.db.write() as s:
            release = self._owned_release(s, name, version, key)
            pkg = release.package
            s.add(DeletedVersion(package=pkg.name, version_key=release.version_key, sha256=release.sha256))
            s.delete(release)
            return {"name": pkg.name, "version": release.version, "deleted": True}

    def record_download(self, release_id: int, package_id: int) -> None:
        with self.db.write() as s:
            s.execute(update(Release).where(Release.id == release_id).values(downloads=Release.downloads + 1))
            s.execute(update(Package).where(Package.id == package_id).values(downloads=Package.downloads + 1))

    # --- reading --------------------------------------------------------------------------

    def _release_dict(self, r: Release, pkg: Package, full: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": pkg.name,
            "version": r.version,
            "summary": r.summary,
            "yanked": r.yanked,
            "yank_reason": r.yank_reason,
            "sha256": r.sha256,
            "size": r.size,
            "uploaded_at": _iso(r.uploaded_at),
            "uploader": r.uploader,
            "requires": {d.name: d.range for d in r.dependencies},
            "provides": [f"{p.kind}.{p.name}" for p in r.provides],
            "core": r.core,
            "python": r.python,
            "sandbox": r.sandbox,
            "signed": r.signed,
            "downloads": r.downloads or 0,
            "download_url": f"/api/v1/packages/{pkg.name}/{r.version}/download",
        }
        if full:
            out["manifest"] = r.manifest
            out["files"] = [
                {"filename": f.filename, "sha256": f.sha256, "size": f.size, "url": f"/files/{f.sha256}/{f.filename}"}
                for f in r.files
            ]
        return out

    def _rating_stats(self, s: Session, package_ids: Sequence[int]) -> dict[int, tuple[float, int]]:
        if not package_ids:
            return {}
        rows = s.execute(
            select(Rating.package_id, func.avg(Rating.score), func.count(Rating.id))
            .where(Rating.package_id.in_(package_ids))
            .group_by(Rating.package_id)
        ).all()
        return {pid: (round(float(avg), 2), int(n)) for pid, avg, n in rows}

    @staticmethod
    def _latest(releases: Sequence[Release]) -> Release | None:
        def rank(r: Release) -> tuple[bool, bool, Version]:
            v = parse_version(r.version)
            return (not r.yanked, not v.is_prerelease, v)

        return max(releases, key=rank) if releases else None

    def _get_package(self, s: Session, name: str) -> Package:
        pkg = s.scalar(select(Package).where(Package.name == canonicalize_name(name)))
        if pkg is None or not pkg.releases:
            raise _not_found(f"package {name!r}")
        return pkg

    def package_info(self, name: str) -> dict[str, Any]:
        with self.db.read() as s:
            pkg = self._get_package(s, name)
            releases = sorted(pkg.releases, key=lambda r: parse_version(r.version), reverse=True)
            latest = self._latest(releases)
            avg, count = self._rating_stats(s, [pkg.id]).get(pkg.id, (None, 0))
            return {
                "name": pkg.name,
                "display_name": pkg.display_name,
                "summary": pkg.summary,
                "downloads": pkg.downloads or 0,
                "rating": avg,
                "rating_count": count,
                "signed_by_publisher_key": pkg.publisher_key is not None,
                "latest": latest.version if latest else None,
                "releases": [self._release_dict(r, pkg) for r in releases],
            }

    def release_info(self, name: str, version: str) -> dict[str, Any]:
        with self.db.read() as s:
            pkg = self._get_package(s, name)
            _, vkey = _version_key(version)
            for r in pkg.releases:
                if r.version_key == vkey:
                    return self._release_dict(r, pkg, full=True)
        raise _not_found(f"{canonicalize_name(name)} {version}")

    def release_blob(self, name: str, version: str) -> tuple[str, str, int, int]:
        """(sha256, file name, release id, package id) of an archive to download."""
        with self.db.read() as s:
            pkg = self._get_package(s, name)
            _, vkey = _version_key(version)
            for r in pkg.releases:
                if r.version_key == vkey:
                    return r.sha256, f"{pkg.name}-{r.version}.apx", r.id, pkg.id
        raise _not_found(f"{canonicalize_name(name)} {version}")

    def search(self, query: str, kind: str | None, sort: str, limit: int, offset: int) -> dict[str, Any]:
        """Filter in SQL, rank in Python over plain columns.

        Only the columns the ranking needs are read (no ORM objects, no dependency or file
        rows), and provides only for each package's latest release: with a thousand packages
        of five releases each, loading whole objects made a broad query take ~0.4 s.
        """
        q = query.strip().lower()
        with self.db.read() as s:
            stmt = select(Package.id, Package.name, Package.summary, Package.downloads).where(Package.releases.any())
            if q:
                stmt = stmt.where(
                    Package.name.contains(canonicalize_name(q), autoescape=True)
                    | func.lower(Package.summary).contains(q, autoescape=True)
                    | Package.releases.any(Release.provides.any(Provide.name.contains(q, autoescape=True)))
                )
            if kind:
                stmt = stmt.where(Package.releases.any(Release.provides.any(Provide.kind == kind.lower())))
            packages = s.execute(stmt).all()
            ids = [p.id for p in packages]
            latest: dict[int, tuple[tuple[bool, bool, Version], int, str]] = {}
            for chunk in _chunks(ids):
                for rid, pid, version, yanked in s.execute(
                    select(Release.id, Release.package_id, Release.version, Release.yanked).where(Release.package_id.in_(chunk))
                ):
                    v = _cached_version(version)
                    rank = (not yanked, not v.is_prerelease, v)
                    if pid not in latest or rank > latest[pid][0]:
                        latest[pid] = (rank, rid, version)
            provides: dict[int, list[str]] = {}
            for chunk in _chunks([entry[1] for entry in latest.values()]):
                for rid, pkind, pname in s.execute(
                    select(Provide.release_id, Provide.kind, Provide.name).where(Provide.release_id.in_(chunk)).order_by(Provide.id)
                ):
                    provides.setdefault(rid, []).append(f"{pkind}.{pname}")
            stats = self._rating_stats(s, ids)
        items = []
        for pkg in packages:
            if pkg.id not in latest:
                continue
            _, rid, version = latest[pkg.id]
            avg, count = stats.get(pkg.id, (None, 0))
            provided = provides.get(rid, [])
            items.append(
                {
                    "name": pkg.name,
                    "version": version,
                    "summary": pkg.summary,
                    "provides": provided,
                    "downloads": pkg.downloads or 0,
                    "rating": avg,
                    "rating_count": count,
                    "score": self._relevance(q, pkg.name, pkg.summary, provided),
                }
            )
        keys = {
            "relevance": lambda i: (-i["score"], -i["downloads"], i["name"]),
            "downloads": lambda i: (-i["downloads"], -i["score"], i["name"]),
            "rating": lambda i: (-(i["rating"] or 0), -i["rating_count"], -i["downloads"], i["name"]),
            "name": lambda i: (i["name"],),
        }
        items.sort(key=keys[sort])
        return {"total": len(items), "results": items[offset : offset + limit]}

    @staticmethod
    def _relevance(q: str, name: str, summary: str | None, provides: Sequence[str]) -> float:
        if not q:
            return 0.0
        cq = canonicalize_name(q)
        score = 0.0
        if name == cq:
            score += 100
        elif name.startswith(cq) or name.endswith(cq):
            score += 50
        elif cq in name:
            score += 30
        if any(q == p.split(".", 1)[1] for p in provides):
            score += 40
        elif any(q in p for p in provides):
            score += 15
        if q in (summary or "").lower():
            score += 10
        return score

    def rate(self, name: str, key: KeyInfo, score: int) -> dict[str, Any]:
        with self.db.write() as s:
            pkg = self._get_package(s, name)
            rating = s.scalar(select(Rating).where(Rating.package_id == pkg.id, Rating.api_key_id == key.id))
            if rating is None:
                s.add(Rating(package_id=pkg.id, api_key_id=key.id, score=score))
            else:
                rating.score = score
                rating.updated_at = datetime.now(UTC)
        return self.ratings(name)

    def ratings(self, name: str) -> dict[str, Any]:
        with self.db.read() as s:
            pkg = self._get_package(s, name)
            rows = s.execute(select(Rating.score, func.count(Rating.id)).where(Rating.package_id == pkg.id).group_by(Rating.score)).all()
            histogram = {str(i): 0 for i in range(1, 6)}
            for score, n in rows:
                histogram[str(score)] = int(n)
            count = sum(histogram.values())
            average = round(sum(int(k) * v for k, v in histogram.items()) / count, 2) if count else None
            return {"name": pkg.name, "average": average, "count": count, "histogram": histogram}

    def resolve(self, requirements: dict[str, str], core: str | None) -> dict[str, Any]:
        with self.db.read() as s:
            try:
                result = resolve(requirements, _DbCatalogue(s), core)
            except ValueError as exc:
                raise MarketError(400, "invalid_requirement", str(exc)) from None
            except ResolutionError as exc:
                raise MarketError(409, "resolution_impossible", exc.explanation) from None
            out = []
            for name in result.order:
                info = result.packages[name]
                rows = s.execute(
                    select(Release, Package).join(Package).where(Package.name == name, Release.version_key == info.version.precedence)
                ).one()
                out.append(self._release_dict(*rows))
            return {"packages": out, "pins": result.pins()}

    # --- simple index ---------------------------------------------------------------------

    def simple_projects(self) -> list[str]:
        with self.db.read() as s:
            return list(
                s.scalars(select(Package.name).where(Package.releases.any(Release.files.any())).order_by(Package.name)).all()
            )

    def simple_files(self, name: str) -> tuple[str, list[dict[str, Any]], list[str]] | None:
        """One joined query over plain columns: pip asks for this page once per project and
        install, so it must not load whole release objects with their dependency rows."""
        cname = canonicalize_name(name)
        with self.db.read() as s:
            rows = s.execute(
                select(
                    Release.id, Release.version, Release.yanked, Release.yank_reason, Release.uploaded_at,
                    ReleaseFile.filename, ReleaseFile.sha256, ReleaseFile.size, ReleaseFile.metadata_sha256,
                    ReleaseFile.requires_python,
                )
                .join(Package, Release.package_id == Package.id)
                .outerjoin(ReleaseFile, ReleaseFile.release_id == Release.id)
                .where(Package.name == cname)
                .order_by(Release.id, ReleaseFile.id)
            ).all()
        if not rows:
            return None
        rows.sort(key=lambda r: _cached_version(r.version))
        files, versions, seen = [], [], set()
        for r in rows:
            if r.id not in seen:
                seen.add(r.id)
                versions.append(to_pep440(r.version))
            if r.filename is None:
                continue
            files.append(
                {
                    "filename": r.filename,
                    "sha256": r.sha256,
                    "size": r.size,
                    "metadata_sha256": r.metadata_sha256,
                    "requires_python": r.requires_python,
                    "yanked": r.yanked,
                    "yank_reason": r.yank_reason,
                    "upload_time": r.uploaded_at,
                }
            )
        return cname, files, versions

    def simple_file(self, sha256: str, filename: str) -> ReleaseFile | None:
        with self.db.read() as s:
            return s.scalar(select(ReleaseFile).where(ReleaseFile.sha256 == sha256, ReleaseFile.filename == filename))
