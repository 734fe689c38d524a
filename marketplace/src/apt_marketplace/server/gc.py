"""What the blob store holds that no row names: blobs of deleted releases, of uploads killed
between blob and commit, and spool files of killed uploads.

Blobs are written before the row that names them, so a young unnamed blob may belong to a
publish still in flight; only blobs older than the grace period are collected.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..database import Database
from .blobs import BlobStore
from .models import Release, ReleaseFile

__all__ = ["GcReport", "collect", "referenced_blobs", "release_blobs", "sweep_spool"]

GRACE_SECONDS = 3600.0


@dataclass(frozen=True)
class GcReport:
    blobs_removed: int
    blob_bytes: int
    spool_removed: int
    spool_bytes: int


def release_blobs(release: Release) -> set[str]:
    shas = {release.sha256}
    for f in release.files:
        shas.update((f.sha256, f.metadata_sha256))
    return shas


def referenced_blobs(s: Session, among: Iterable[str] | None = None) -> set[str]:
    """The blob names some row still uses, limited to `among` when given."""
    wanted = None if among is None else list(among)
    out: set[str] = set()
    queries = [select(Release.sha256), select(ReleaseFile.sha256), select(ReleaseFile.metadata_sha256)]
    for q in queries:
        column = q.selected_columns[0]
        if wanted is not None:
            q = q.where(column.in_(wanted))
        out.update(s.scalars(q))
    return out


def sweep_spool(blobs: BlobStore, older_than: float = GRACE_SECONDS) -> tuple[int, int]:
    """Spool files of uploads that died; a live upload touches its file with every chunk."""
    removed = size = 0
    cutoff = time.time() - older_than
    for path in blobs.tmp.iterdir():
        try:
            st = path.stat()
            if path.is_file() and st.st_mtime < cutoff:
                path.unlink()
                removed += 1
                size += st.st_size
        except FileNotFoundError:
            continue
    return removed, size


def _stored(blobs: BlobStore) -> Iterable[Path]:
    for first in blobs.root.iterdir():
        if first == blobs.tmp or not first.is_dir() or len(first.name) != 2:
            continue
        for second in first.iterdir():
            if second.is_dir():
                yield from (p for p in second.iterdir() if p.is_file() and len(p.name) == 64)


def collect(db: Database, blobs: BlobStore, grace_seconds: float = GRACE_SECONDS) -> GcReport:
    with db.read() as s:
        keep = referenced_blobs(s)
    cutoff = time.time() - grace_seconds
    removed = size = 0
    for path in _stored(blobs):
        if path.name in keep:
            continue
        try:
            st = path.stat()
        except FileNotFoundError:
            continue
        if st.st_mtime < cutoff:
            blobs.remove(path.name)
            removed += 1
            size += st.st_size
    spool_removed, spool_bytes = sweep_spool(blobs, grace_seconds)
    return GcReport(removed, size, spool_removed, spool_bytes)
