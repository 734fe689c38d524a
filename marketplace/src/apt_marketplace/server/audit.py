"""The audit log: written in the same transaction as the change it describes, so a row exists
exactly when the change does, and read by `apt market audit` where the database is."""

from __future__ import annotations

from datetime import UTC
from typing import Any

from packaging.utils import canonicalize_name
from sqlalchemy import select
from sqlalchemy.orm import Session

from ..database import Database
from .models import AuditEvent

__all__ = ["read_audit", "record"]


def record(
    s: Session,
    action: str,
    *,
    key_id: str | None = None,
    owner: str | None = None,
    package: str | None = None,
    version: str | None = None,
    address: str | None = None,
    detail: str = "",
) -> None:
    s.add(
        AuditEvent(
            action=action,
            key_id=key_id,
            owner=owner,
            package=package,
            version=version,
            address=(address or "")[:64] or None,
            detail=detail,
        )
    )


def read_audit(db: Database, package: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    """Newest first."""
    with db.read() as s:
        stmt = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit)
        if package:
            stmt = stmt.where(AuditEvent.package == canonicalize_name(package))
        rows = []
        for e in s.scalars(stmt):
            at = e.at if e.at.tzinfo else e.at.replace(tzinfo=UTC)
            rows.append(
                {
                    "at": at.isoformat().replace("+00:00", "Z"),
                    "action": e.action,
                    "key_id": e.key_id,
                    "owner": e.owner,
                    "package": e.package,
                    "version": e.version,
                    "address": e.address,
                    "detail": e.detail,
                }
            )
        return rows
