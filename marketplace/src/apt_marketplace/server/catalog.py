"""What the marketplace does, independent of HTTP: publish, yank, delete, search, rate, resolve.

An upload belongs to the catalog from its first byte: it is spooled to disk, hashed and capped
as it streams in, read with the hardened archive reader and, only inside the transaction that
inserts its rows, adopted into the blob store; on every other path the spool is discarded.
Blobs land before the commit makes the rows visible, and the uniqueness of (package, version)
in the database is what decides a race between identical or different uploads, not a lock.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import AsyncIterable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from anyio import to_thread
from packaging.utils import canonicalize_name
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..apx.errors import ApxError
from ..apx.manifest import Manifest
from ..apx.reader import Apx, read_apx
from ..apx.signing import verify_signature
from ..database import Database
from ..resolver import ReleaseInfo, ResolutionError, resolve
from ..semver import InvalidVersion, Version, parse_version, to_pep440
from .audit import record
from .blobs import BlobStore, SpoolFile
from .errors import MarketError
from .gc import referenced_blobs, release_blobs
from .keys import KeyInfo
from .models import DeletedVersion, Dependency, Package, Provide, Rating, Release, ReleaseFile
from .review import hold_reason
from .search import rating_stats, search_packages
from .settings import Settings
from .shelf import WheelShelf

__all__ = ["FAILED", "HELD", "PUBLISHED", "QUARANTINED", "Catalog", "DbCatalogue"]

_PUBLISH_ATTEMPTS = 3
PUBLISHED, QUARANTINED, FAILED, HELD = "published", "quarantined", "failed", "held"


def _not_found(what: str) -> MarketError:
    return MarketError(404, "not_found", f"{what} does not exist")


def _version_key(text: str) -> str:
    """The precedence key of a version named in a request; a non-semver name cannot exist."""
    try:
        return parse_version(text).precedence
    except InvalidVersion:
        raise MarketError(404, "not_found", f"{text!r} is not a semver version, so no such release exists") from None


def _iso(dt: datetime) -> str:
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC).isoformat().replace("+00:00", "Z")


class DbCatalogue:
    """The resolver's view of the database: published releases only."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def releases(self, name: str) -> Sequence[ReleaseInfo]:
        rows = self.session.execute(
            select(Release.id, Release.version, Release.core, Release.yanked)
            .join(Package)
            .where(Package.name == canonicalize_name(name), Release.status == PUBLISHED)
        ).all()
        requires: dict[int, dict[str, str]] = {row.id: {} for row in rows}
        if rows:
            for dep in self.session.execute(
                select(Dependency.release_id, Dependency.name, Dependency.range).where(
                    Dependency.release_id.in_(list(requires))
                )
            ):
                requires[dep.release_id][dep.name] = dep.range
        return [
            ReleaseInfo(
                name=name, version=parse_version(r.version), requires=requires[r.id], core=r.core, yanked=r.yanked
            )
            for r in rows
        ]


class Catalog:
    def __init__(self, settings: Settings, db: Database, blobs: BlobStore) -> None:
        self.settings = settings
        self.db = db
        self.blobs = blobs
        self.shelf = WheelShelf(settings.wheel_dir)
        #: Called with the id of each release committed as quarantined; the app wires it to
        #: the background checker, so the upload returns before the checks run.
        self.on_quarantined: Callable[[int], None] = lambda _release_id: None

    # --- publishing -----------------------------------------------------------------------

    async def publish(
        self, body: AsyncIterable[bytes], key: KeyInfo, declared_length: str | None = None
    ) -> tuple[dict[str, Any], bool]:
        """Returns (release, created). An identical archive again is a no-op, not an error."""
        limit = self.settings.max_upload_bytes
        too_large = MarketError(413, "too_large", f"archives are limited to {limit} bytes")
        if declared_length is not None:
            if not declared_length.isdigit():
                raise MarketError(400, "bad_request", "Content-Length must be a number")
            if int(declared_length) > limit:
                raise too_large
        spool = await to_thread.run_sync(self.blobs.spool)
        try:
            async for chunk in body:
                if spool.size + len(chunk) > limit:
                    raise too_large
                spool.write(chunk)
            if spool.size == 0:
                raise MarketError(400, "invalid_archive", "the request body is empty; send the .apx bytes")
            return await to_thread.run_sync(self._publish_spooled, spool, key)
        finally:
            spool.discard()

    def publish_file(self, archive: Path, key: KeyInfo) -> tuple[dict[str, Any], bool]:
        """Publish an archive from disk, as an upload of its bytes would (first-party builds)."""
        spool = self.blobs.spool()
        try:
            with open(archive, "rb") as fh:
                while chunk := fh.read(1 << 20):
                    spool.write(chunk)
            return self._publish_spooled(spool, key)
        finally:
            spool.discard()

    def _publish_spooled(self, spool: SpoolFile, key: KeyInfo) -> tuple[dict[str, Any], bool]:
        sha = spool.finish()

        def authorize(m: Manifest) -> None:
            if not key.may_publish(m.canonical_name):
                raise MarketError(
                    403, "forbidden", f"this API key may not publish {m.canonical_name}; ask for a key scoped to it"
                )

        with tempfile.TemporaryDirectory(prefix="wheels-", dir=self.blobs.tmp) as wheel_dir:
            try:
                apx = read_apx(spool.path, self.settings.archive_limits, authorize, Path(wheel_dir))
            except ApxError as exc:
                raise MarketError(400, "invalid_archive", str(exc)) from None
            return self._publish_read(apx, sha, spool, key)

    def _publish_read(self, apx: Apx, sha: str, spool: SpoolFile, key: KeyInfo) -> tuple[dict[str, Any], bool]:
        m = apx.manifest
        for _attempt in range(_PUBLISH_ATTEMPTS):
            try:
                body, created, release_id = self._commit(apx, sha, spool, key)
            except IntegrityError:
                # A concurrent upload took the row (or the package) first; the next attempt sees
                # it committed and answers as for any existing release.
                continue
            if created and body["status"] == QUARANTINED:
                self.on_quarantined(release_id)
            return body, created
        raise MarketError(409, "conflict", f"{m.canonical_name} {m.version} conflicts with a concurrent upload; try again")

    def _commit(self, apx: Apx, sha: str, spool: SpoolFile, key: KeyInfo) -> tuple[dict[str, Any], bool, int]:
        m = apx.manifest
        name = m.canonical_name
        version_key = m.semver.precedence
        with self.db.write() as s:
            pkg = s.scalar(select(Package).where(Package.name == name))
            if pkg is not None and pkg.owner and pkg.owner != key.owner:
                raise MarketError(
                    403,
                    "not_owner",
                    f"{name} belongs to owner {pkg.owner}, and this key speaks for {key.owner}; "
                    f"publish under another name or ask for a key with --owner {pkg.owner}",
                )
            if s.get(DeletedVersion, (name, version_key)) is not None:
                raise MarketError(
                    409,
                    "version_deleted",
                    f"{name} {version_key} was deleted and can never be published again; bump the version",
                )
            if pkg is not None:
                existing = s.scalar(
                    select(Release).where(Release.package_id == pkg.id, Release.version_key == version_key)
                )
                if existing is not None:
                    if existing.sha256 == sha:
                        return self._release_dict(existing, pkg), False, existing.id
                    if existing.status != FAILED:
                        raise MarketError(
                            409, "version_exists", f"{name} {existing.version} exists with different content; publish a new version"
                        )
                    # A release that failed its checks was never visible, so a fixed upload of
                    # the same version replaces it; its blobs are left for `apt market gc`.
                    s.delete(existing)
                    s.flush()
                if pkg.owner is None:
                    pkg.owner = key.owner
            else:
                pkg = Package(name=name, display_name=m.name, summary=m.summary, downloads=0, owner=key.owner)
                pkg.review_reason = hold_reason(s, name, key.owner)
                pkg.review = "held" if pkg.review_reason else "ok"
                s.add(pkg)
                s.flush()
            if pkg.publisher_key:
                try:
                    verify_signature(apx, pkg.publisher_key)
                except ApxError as exc:
                    raise MarketError(403, "invalid_signature", str(exc)) from None
            filenames = [w.filename for w in apx.wheels]
            taken = s.scalars(select(ReleaseFile.filename).where(ReleaseFile.filename.in_(filenames))).all()
            if taken:
                raise MarketError(
                    409,
                    "file_exists",
                    f"a wheel named {taken[0]} is already published; PEP 440 spells {m.version} like an existing version",
                )
            release = Release(
                package_id=pkg.id,
                version=m.version,
                version_key=version_key,
                summary=m.summary,
                core=m.core,
                python=m.python,
                sandbox=m.sandbox,
                sha256=sha,
                size=spool.size,
                manifest=m.model_dump(mode="json"),
                signed=apx.signature is not None,
                uploader=f"{key.key_id} ({key.owner})"[:64],
                downloads=0,
                yanked=False,
                status=self._initial_status(pkg),
                status_reason=pkg.review_reason if pkg.review != "ok" else None,
            )
            release.dependencies = [Dependency(name=canonicalize_name(d), range=r) for d, r in m.requires.items()]
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
                if wheel.file is not None:
                    self.blobs.put_file(wheel.file, wheel.sha256)
                else:
                    self.blobs.put(wheel.data)
                self.blobs.put(wheel.metadata)
            self.blobs.adopt(spool, sha)
            versions = s.scalars(select(Release.version).where(Release.package_id == pkg.id))
            if max(parse_version(v) for v in versions) == m.semver:
                pkg.summary = m.summary
                pkg.display_name = m.name
            record(
                s, "publish", key_id=key.key_id, owner=key.owner, package=name, version=m.version, address=key.address,
                detail=f"sha256 {sha}; {release.status}" + (f": {release.status_reason}" if release.status_reason else ""),
            )
            return self._release_dict(release, pkg), True, release.id

    def _initial_status(self, pkg: Package) -> str:
        if pkg.review == "rejected":
            raise MarketError(403, "name_rejected", f"the name {pkg.name} was rejected in review; publish under another name")
        if pkg.review != "ok":
            return HELD
        return PUBLISHED if self.settings.checks == "off" else QUARANTINED

    # --- lifecycle ------------------------------------------------------------------------

    def _owned_release(self, s: Session, name: str, version: str, key: KeyInfo) -> Release:
        cname = canonicalize_name(name)
        if not key.may_publish(cname):
            raise MarketError(403, "forbidden", f"this API key is not scoped to {cname}")
        vkey = _version_key(version)
        release = s.scalar(select(Release).join(Package).where(Package.name == cname, Release.version_key == vkey))
        if release is None:
            raise _not_found(f"{cname} {version}")
        return release

    def set_yanked(self, name: str, version: str, key: KeyInfo, yanked: bool, reason: str | None) -> dict[str, Any]:
        with self.db.write() as s:
            release = self._owned_release(s, name, version, key)
            release.yanked = yanked
            release.yank_reason = (reason or None) if yanked else None
            record(
                s, "yank" if yanked else "unyank", key_id=key.key_id, owner=key.owner, package=release.package.name,
                version=release.version, address=key.address, detail=reason or "",
            )
            s.flush()
            return self._release_dict(release, release.package)

    def delete_release(self, name: str, version: str, key: KeyInfo) -> dict[str, Any]:
        with self.db.write() as s:
            release = self._owned_release(s, name, version, key)
            pkg = release.package
            s.add(DeletedVersion(package=pkg.name, version_key=release.version_key, sha256=release.sha256))
            shas = release_blobs(release)
            s.delete(release)
            record(s, "delete", key_id=key.key_id, owner=key.owner, package=pkg.name, version=release.version, address=key.address)
            out = {"name": pkg.name, "version": release.version, "deleted": True}
        self._free_blobs(shas)
        return out

    def _free_blobs(self, shas: set[str]) -> None:
        """Blobs no remaining row names, removed after the deletion committed (a crash in
        between leaves an orphan for `apt market gc`, never a row without its blob)."""
        with self.db.read() as s:
            still = referenced_blobs(s, shas)
        for sha in shas - still:
            self.blobs.remove(sha)

    def download(self, name: str, version: str) -> tuple[Path, str, str]:
        """(path, file name, sha256) of a release's archive, counting the download."""
        with self.db.read() as s:
            pkg = self._get_package(s, name)
            vkey = _version_key(version)
            found = next((r for r in self._visible(pkg, None) if r.version_key == vkey), None)
            if found is None:
                raise _not_found(f"{canonicalize_name(name)} {version}")
            release_id, package_id, sha = found.id, pkg.id, found.sha256
            filename = f"{pkg.name}-{found.version}.apx"
        path = self.blobs.path(sha)
        if not path.is_file():
            raise MarketError(410, "blob_missing", f"the archive of {name} {version} is missing from storage")
        with self.db.write() as s:
            s.execute(update(Release).where(Release.id == release_id).values(downloads=Release.downloads + 1))
            s.execute(update(Package).where(Package.id == package_id).values(downloads=Package.downloads + 1))
        return path, filename, sha

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
            "status": r.status,
            "status_reason": r.status_reason,
            "download_url": f"/api/v1/packages/{pkg.name}/{r.version}/download",
        }
        if full:
            out["manifest"] = r.manifest
            out["checks"] = r.checks
            out["files"] = [
                {"filename": f.filename, "sha256": f.sha256, "size": f.size, "url": f"/files/{f.sha256}/{f.filename}"}
                for f in r.files
            ]
        return out

    @staticmethod
    def _latest(releases: Sequence[Release]) -> Release | None:
        def rank(r: Release) -> tuple[bool, bool, Version]:
            v = parse_version(r.version)
            return (not r.yanked, not v.is_prerelease, v)

        return max(releases, key=rank) if releases else None

    @staticmethod
    def _visible(pkg: Package, key: KeyInfo | None) -> list[Release]:
        """Published releases; the owner's own key also sees quarantined, failed and held ones."""
        if key is not None and key.may_publish(pkg.name) and key.owner == pkg.owner:
            return list(pkg.releases)
        return [r for r in pkg.releases if r.status == PUBLISHED]

    def _get_package(self, s: Session, name: str, key: KeyInfo | None = None) -> Package:
        pkg = s.scalar(select(Package).where(Package.name == canonicalize_name(name)))
        if pkg is None or not self._visible(pkg, key):
            raise _not_found(f"package {name!r}")
        return pkg

    def package_info(self, name: str, key: KeyInfo | None = None) -> dict[str, Any]:
        """With the owner's key, every release with its status and the reason of a failure."""
        with self.db.read() as s:
            pkg = self._get_package(s, name, key)
            releases = sorted(self._visible(pkg, key), key=lambda r: parse_version(r.version), reverse=True)
            latest = self._latest([r for r in releases if r.status == PUBLISHED])
            avg, count = rating_stats(s, [pkg.id]).get(pkg.id, (None, 0))
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

    def release_info(self, name: str, version: str, key: KeyInfo | None = None) -> dict[str, Any]:
        with self.db.read() as s:
            pkg = self._get_package(s, name, key)
            vkey = _version_key(version)
            for r in self._visible(pkg, key):
                if r.version_key == vkey:
                    return self._release_dict(r, pkg, full=True)
        raise _not_found(f"{canonicalize_name(name)} {version}")

    def search(self, query: str, kind: str | None, sort: str, limit: int, offset: int) -> dict[str, Any]:
        with self.db.read() as s:
            return search_packages(s, query, kind, sort, limit, offset)

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
                result = resolve(requirements, DbCatalogue(s), core)
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
            names = set(
                s.scalars(
                    select(Package.name).where(Package.releases.any((Release.status == PUBLISHED) & Release.files.any()))
                )
            )
        return sorted(names | self.shelf.projects())

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
                .where(Package.name == cname, Release.status == PUBLISHED)
                .order_by(Release.id, ReleaseFile.id)
            ).all()
        if not rows:
            shelf_files, shelf_versions = self.shelf.files(cname)
            return (cname, shelf_files, shelf_versions) if shelf_files else None
        files, versions, seen = [], [], set()
        for r in sorted(rows, key=lambda r: parse_version(r.version)):
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

    def simple_blob(self, sha256: str, filename: str, metadata: bool) -> Path | None:
        """The blob behind a simple-index file URL: the wheel, or its METADATA for PEP 658."""
        with self.db.read() as s:
            row = s.scalar(
                select(ReleaseFile)
                .join(Release)
                .where(ReleaseFile.sha256 == sha256, ReleaseFile.filename == filename, Release.status == PUBLISHED)
            )
            if row is None:
                return self.shelf.locate(sha256, filename, metadata)
            return self.blobs.path(row.metadata_sha256 if metadata else row.sha256)
