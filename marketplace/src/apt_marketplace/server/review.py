"""Names held for review: a new project that reads like another owner's project waits for a
person (`apt market review`) instead of going live, since a look-alike is how typosquats work."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..apx.names import closest_clash
from ..database import Database
from .audit import record
from .models import Package

__all__ = ["approve", "held_projects", "hold_reason", "reject"]


def hold_reason(s: Session, name: str, owner: str) -> str | None:
    """Why a new project `name` by `owner` must wait for review, or None."""
    others = [n for n, o in s.execute(select(Package.name, Package.owner)) if o != owner]
    clash = closest_clash(name, others)
    if clash is None:
        return None
    return f"{name} looks like the existing project {clash} of another owner; held until an admin runs 'apt market review --approve {name}'"


def held_projects(db: Database) -> list[dict[str, Any]]:
    with db.read() as s:
        return [
            {
                "name": p.name,
                "owner": p.owner,
                "reason": p.review_reason,
                "releases": sorted(r.version for r in p.releases),
            }
            for p in s.scalars(select(Package).where(Package.review == "held").order_by(Package.name))
        ]


def _decide(db: Database, name: str, approve: bool, next_status: str) -> list[int]:
    with db.write() as s:
        pkg = s.scalar(select(Package).where(Package.name == name, Package.review == "held"))
        if pkg is None:
            raise ValueError(f"{name} is not held for review; 'apt market review' lists what is")
        pkg.review = "ok" if approve else "rejected"
        ids = []
        for r in pkg.releases:
            if r.status == "held":
                r.status = next_status if approve else "failed"
                r.status_reason = None if approve else "the name was rejected in review"
                ids.append(r.id)
        record(s, "review.approve" if approve else "review.reject", package=name, detail=pkg.review_reason or "")
        return ids


def approve(db: Database, name: str, next_status: str) -> list[int]:
    """Lets the held releases go on to the publish checks (`next_status`); returns their ids."""
    return _decide(db, name, True, next_status)


def reject(db: Database, name: str) -> None:
    _decide(db, name, False, "failed")


