"""Search: filter in SQL, rank in Python over plain columns.

Only the columns the ranking needs are read (no ORM objects, no dependency or file rows), and
provides only for each package's latest release: with a thousand packages of five releases
each, loading whole objects made a broad query take ~0.4 s.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from packaging.utils import canonicalize_name
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ..semver import Version, parse_version
from .models import Package, Provide, Rating, Release

__all__ = ["rating_stats", "search_packages"]


def _chunks(ids: Sequence[int], size: int = 500) -> Iterator[list[int]]:
    """IN lists in slices: SQLite caps bound parameters per statement."""
    for start in range(0, len(ids), size):
        yield list(ids[start : start + size])


def rating_stats(s: Session, package_ids: Sequence[int]) -> dict[int, tuple[float, int]]:
    if not package_ids:
        return {}
    rows = s.execute(
        select(Rating.package_id, func.avg(Rating.score), func.count(Rating.id))
        .where(Rating.package_id.in_(package_ids))
        .group_by(Rating.package_id)
    ).all()
    return {pid: (round(float(avg), 2), int(n)) for pid, avg, n in rows}


def search_packages(s: Session, query: str, kind: str | None, sort: str, limit: int, offset: int) -> dict[str, Any]:
    """One page of hits for `query`, ranked by `sort`, within the session's snapshot."""
    q = query.strip().lower()
    stmt = select(Package.id, Package.name, Package.summary, Package.downloads).where(
        Package.releases.any(Release.status == "published")
    )
    if q:
        stmt = stmt.where(
            Package.name.contains(canonicalize_name(q), autoescape=True)
            | func.lower(Package.summary).contains(q, autoescape=True)
            | Package.releases.any(
                (Release.status == "published") & Release.provides.any(Provide.name.contains(q, autoescape=True))
            )
        )
    if kind:
        stmt = stmt.where(
            Package.releases.any((Release.status == "published") & Release.provides.any(Provide.kind == kind.lower()))
        )
    packages = s.execute(stmt).all()
    ids = [p.id for p in packages]
    latest: dict[int, tuple[tuple[bool, bool, Version], int, str]] = {}
    for chunk in _chunks(ids):
        for rid, pid, version, yanked in s.execute(
            select(Release.id, Release.package_id, Release.version, Release.yanked).where(
                Release.package_id.in_(chunk), Release.status == "published"
            )
        ):
            v = parse_version(version)
            rank = (not yanked, not v.is_prerelease, v)
            if pid not in latest or rank > latest[pid][0]:
                latest[pid] = (rank, rid, version)
    provides: dict[int, list[str]] = {}
    for chunk in _chunks([entry[1] for entry in latest.values()]):
        for rid, pkind, pname in s.execute(
            select(Provide.release_id, Provide.kind, Provide.name).where(Provide.release_id.in_(chunk)).order_by(Provide.id)
        ):
            provides.setdefault(rid, []).append(f"{pkind}.{pname}")
    stats = rating_stats(s, ids)
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
                "score": _relevance(q, pkg.name, pkg.summary, provided),
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
