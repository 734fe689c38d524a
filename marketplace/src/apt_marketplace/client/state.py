"""The client's local state database: what `apt market` installed where, and every change.

It lives in `$APT_HOME/market/state.db` (SQLite through SQLAlchemy). One APT_HOME can serve
several virtual environments, so every row names the environment (`sys.prefix`) it is about.
Each install, upgrade and rollback is a transaction row saying who, what, from, to, when and
the full resolved set; rollback reads those sets back, so the history is the source of truth
and the `installed` table is only its current projection.

A change is written twice: a `pending` row before pip touches the environment and, in one
database transaction after pip succeeded, its `done` status together with the new `installed`
rows. A crash in between leaves a visible `pending` row instead of a silent mismatch.
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, ForeignKey, Integer, String, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from ..database import Database

__all__ = ["ArchiveRow", "InstalledRow", "Pin", "StateDB", "TransactionRow", "current_user"]


def _utcnow() -> datetime:
    return datetime.now(UTC)


def current_user() -> str:
    """The login name recorded as 'who'; the uid when the name cannot be looked up (containers)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


class _Base(DeclarativeBase):
    """Separate metadata from the server's tables: the two databases never share a file."""


class TransactionRow(_Base):
    __tablename__ = "transactions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    environment: Mapped[str] = mapped_column(String(4096), index=True)
    action: Mapped[str] = mapped_column(String(16))
    package: Mapped[str] = mapped_column(String(100), index=True)
    from_version: Mapped[str | None] = mapped_column(String(256), nullable=True)
    to_version: Mapped[str | None] = mapped_column(String(256), nullable=True)
    user: Mapped[str] = mapped_column(String(256))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_utcnow)
    status: Mapped[str] = mapped_column(String(16))
    source: Mapped[str] = mapped_column(String(2048))
    resolved: Mapped[dict[str, Any]] = mapped_column(JSON)
    changes: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    detail: Mapped[str] = mapped_column(String(4096), default="")


class InstalledRow(_Base):
    __tablename__ = "installed"

    environment: Mapped[str] = mapped_column(String(4096), primary_key=True)
    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    version: Mapped[str] = mapped_column(String(256))
    sha256: Mapped[str] = mapped_column(String(64))
    direct: Mapped[bool] = mapped_column(Boolean)
    requested: Mapped[str] = mapped_column(String(256), default="")
    requires: Mapped[dict[str, str]] = mapped_column(JSON)
    provides: Mapped[list[str]] = mapped_column(JSON)
    transaction_id: Mapped[int] = mapped_column(ForeignKey("transactions.id"))
    installed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_utcnow)


class ArchiveRow(_Base):
    """Index of the download cache, and a note that an archive passed sandbox validation."""

    __tablename__ = "archives"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(100), index=True)
    version: Mapped[str] = mapped_column(String(256))
    size: Mapped[int] = mapped_column(Integer)
    cached_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_utcnow)
    validated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    validation: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


@dataclass(frozen=True)
class Pin:
    """One member of a resolved set: enough to find the archive again without the server."""

    name: str
    version: str
    sha256: str
    requires: Mapping[str, str]
    provides: Sequence[str]

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "sha256": self.sha256, "requires": dict(self.requires), "provides": list(self.provides)}

    @classmethod
    def from_dict(cls, name: str, data: Mapping[str, Any]) -> Pin:
        return cls(name, data["version"], data["sha256"], dict(data.get("requires", {})), list(data.get("provides", [])))


class StateDB:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.db = Database(f"sqlite:///{path}")
        self.db.create_all(_Base.metadata)

    def close(self) -> None:
        self.db.dispose()

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """All-or-nothing: commits on success, rolls back on any exception."""
        with self.db.write() as session:
            yield session

    # --- reading --------------------------------------------------------------------------

    def installed(self, environment: str) -> dict[str, InstalledRow]:
        with self.db.read() as s:
            rows = s.scalars(select(InstalledRow).where(InstalledRow.environment == environment).order_by(InstalledRow.name))
            return {row.name: row for row in rows}

    def history(self, environment: str, package: str | None = None) -> list[TransactionRow]:
        """Oldest first; with `package`, only transactions whose resolved set or changes name it."""
        with self.db.read() as s:
            rows = list(
                s.scalars(select(TransactionRow).where(TransactionRow.environment == environment).order_by(TransactionRow.id))
            )
        if package is None:
            return rows
        return [r for r in rows if r.package == package or package in r.resolved or any(c["name"] == package for c in r.changes)]

    def archive(self, sha256: str) -> ArchiveRow | None:
        with self.db.read() as s:
            return s.get(ArchiveRow, sha256)

    # --- writing --------------------------------------------------------------------------

    def note_archive(self, sha256: str, name: str, version: str, size: int, validation: dict[str, Any] | None = None) -> None:
        with self.transaction() as s:
            row = s.get(ArchiveRow, sha256)
            if row is None:
                row = ArchiveRow(sha256=sha256, name=name, version=version, size=size)
                s.add(row)
            if validation is not None:
                row.validated_at = _utcnow()
                row.validation = validation

    def begin_change(
        self,
        environment: str,
        action: str,
        package: str,
        from_version: str | None,
        to_version: str | None,
        source: str,
        resolved: Mapping[str, Pin],
        changes: Sequence[dict[str, Any]],
    ) -> int:
        with self.transaction() as s:
            row = TransactionRow(
                environment=environment,
                action=action,
                package=package,
                from_version=from_version,
                to_version=to_version,
                user=current_user(),
                status="pending",
                source=source,
                resolved={name: pin.to_dict() for name, pin in resolved.items()},
                changes=list(changes),
            )
            s.add(row)
            s.flush()
            return row.id

    def fail_change(self, transaction_id: int, detail: str) -> None:
        with self.transaction() as s:
            row = s.get(TransactionRow, transaction_id)
            if row is not None:
                row.status = "failed"
                row.detail = detail[:4000]

    def finish_change(
        self,
        transaction_id: int,
        environment: str,
        installed: Mapping[str, Pin],
        removed: Sequence[str],
        direct: Mapping[str, str],
    ) -> None:
        """Mark the change done and write the new `installed` rows in the same transaction.

        `installed` is the whole new state of the environment's market plugins; `direct` maps the plugins the user asked for to the range they asked with; every other
        member of a set is a dependency and may be removed once nothing needs it.
        """
        with self.transaction() as s:
            row = s.get(TransactionRow, transaction_id)
            if row is None:
                raise LookupError(f"transaction {transaction_id} vanished from the state database")
            row.status = "done"
            for name in removed:
                existing = s.get(InstalledRow, (environment, name))
                if existing is not None:
                    s.delete(existing)
            for name, pin in installed.items():
                existing = s.get(InstalledRow, (environment, name))
                if existing is None:
                    existing = InstalledRow(environment=environment, name=name)
                    s.add(existing)
                if existing.sha256 != pin.sha256:
                    existing.version = pin.version
                    existing.sha256 = pin.sha256
                    existing.requires = dict(pin.requires)
                    existing.provides = list(pin.provides)
                    existing.transaction_id = transaction_id
                    existing.installed_at = _utcnow()
                existing.direct = name in direct
                existing.requested = direct.get(name, "")
