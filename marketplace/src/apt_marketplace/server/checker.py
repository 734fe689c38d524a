"""The background half of publishing: a bounded pool that runs the publish checks on each
quarantined release and moves it to published or failed, so the upload itself returns at once.

A poll picks up what the pool was never handed: releases left quarantined by a restart, and
held releases an admin approved from another process. A release whose plugin dependencies are
themselves still quarantined waits for them instead of failing.
"""

from __future__ import annotations

import logging
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

from packaging.utils import canonicalize_name
from sqlalchemy import select
from sqlalchemy.orm import Session

from ..apx.errors import ApxError
from ..apx.reader import read_apx
from ..checks import Check, archive_checks, dependency_check, sandbox_check
from ..database import Database
from .audit import record
from .blobs import BlobStore
from .catalog import FAILED, PUBLISHED, QUARANTINED, DbCatalogue
from .models import Package, Release
from .settings import Settings

__all__ = ["Checker"]

log = logging.getLogger("apt_marketplace.checker")


def _aware(dt: datetime) -> datetime:
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def _printable(text: str) -> str:
    """A plugin writes its own exception text; PostgreSQL refuses NUL in text columns."""
    return text.replace("\x00", "\\x00")[:2000]


class Checker:
    def __init__(self, settings: Settings, db: Database, blobs: BlobStore) -> None:
        self.settings = settings
        self.db = db
        self.blobs = blobs
        self.poll_seconds = settings.check_poll_seconds
        self._pool = ThreadPoolExecutor(max_workers=max(1, settings.check_workers), thread_name_prefix="apt-check")
        self._lock = threading.Lock()
        self._in_flight: set[int] = set()
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="apt-check-poll", daemon=True)

    def start(self) -> None:
        self._poller.start()

    def stop(self) -> None:
        self._stop.set()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def submit(self, release_id: int) -> None:
        with self._lock:
            if release_id in self._in_flight or self._stop.is_set():
                return
            self._in_flight.add(release_id)
        self._pool.submit(self._run, release_id)

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                with self.db.read() as s:
                    ids = list(s.scalars(select(Release.id).where(Release.status == QUARANTINED).order_by(Release.id)))
            except Exception:
                log.exception("polling for quarantined releases failed")
                continue
            for rid in ids:
                self.submit(rid)

    def _run(self, release_id: int) -> None:
        try:
            self._check(release_id)
        except Exception as exc:
            # Failing the release beats leaving it for the poll to retry forever.
            log.exception("checking release %s failed", release_id)
            try:
                self._finish(release_id, [Check("checks", False, f"the checks could not run ({type(exc).__name__}); upload again")])
            except Exception:
                log.exception("recording the failure of release %s failed", release_id)
        finally:
            with self._lock:
                self._in_flight.discard(release_id)

    def _check(self, release_id: int) -> None:
        with self.db.read() as s:
            release = s.get(Release, release_id)
            if release is None or release.status != QUARANTINED:
                return
            sha = release.sha256
            waited = (datetime.now(UTC) - _aware(release.uploaded_at)).total_seconds()
        path = self.blobs.path(sha)
        with tempfile.TemporaryDirectory(prefix="check-", dir=self.blobs.tmp) as wheel_dir:
            try:
                apx = read_apx(path, self.settings.archive_limits, spool_dir=Path(wheel_dir))
            except (ApxError, OSError) as exc:
                self._finish(release_id, [Check("archive", False, str(exc))])
                return
            results = archive_checks(apx)
            with self.db.read() as s:
                deps = dependency_check(apx, DbCatalogue(s))
                may_wait = waited < self.settings.dependency_wait_seconds
                if not deps.ok and may_wait and self._dependencies_pending(s, list(apx.manifest.requires)):
                    return
            results.append(deps)
            if self.settings.checks == "sandbox" and all(c.ok for c in results):
                results.append(sandbox_check(path, apx))
        self._finish(release_id, results)

    @staticmethod
    def _dependencies_pending(s: Session, names: list[str]) -> bool:
        wanted = [canonicalize_name(n) for n in names]
        return (
            s.scalar(
                select(Release.id).join(Package).where(Package.name.in_(wanted), Release.status == QUARANTINED).limit(1)
            )
            is not None
        )

    def _finish(self, release_id: int, results: list[Check]) -> None:
        results = [Check(c.name, c.ok, _printable(c.detail)) for c in results]
        failed = [c for c in results if not c.ok]
        with self.db.write() as s:
            release = s.get(Release, release_id)
            if release is None or release.status != QUARANTINED:
                return
            release.checks = [c.to_dict() for c in results]
            if failed:
                release.status = FAILED
                release.status_reason = "; ".join(f"{c.name}: {c.detail}" for c in failed)[:4000]
            else:
                release.status = PUBLISHED
                release.status_reason = None
            record(
                s,
                "checks." + ("failed" if failed else "passed"),
                package=release.package.name,
                version=release.version,
                detail=release.status_reason or "",
            )
