"""Persistent record of failures (plugin hook errors, NaN/Inf steps, crashes).

Stored with SQLAlchemy in ``APT_HOME/errors.db`` so that ``apt errors`` can show what went
wrong across runs, group recurring failures by pattern and export a report.

The table only ever gains nullable columns, added in place when an older database is opened
(:func:`_upgrade`): a database written by any earlier apt stays readable, and an older apt
reading a newer database simply ignores the columns it does not know.
"""

from __future__ import annotations

import builtins
import json
import re
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Engine,
    Integer,
    Select,
    String,
    Text,
    create_engine,
    func,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from apt.errors import AptError
from apt.home import apt_home


class _Base(DeclarativeBase):
    pass


class ErrorRecord(_Base):
    __tablename__ = "errors"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    type: Mapped[str] = mapped_column(String(64), index=True)
    message: Mapped[str] = mapped_column(Text)
    context: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    traceback: Mapped[str] = mapped_column(Text, default="")
    plugin: Mapped[str | None] = mapped_column(String(128), index=True, nullable=True)
    run_id: Mapped[str | None] = mapped_column(String(64), index=True, nullable=True)
    step: Mapped[int | None] = mapped_column(Integer, nullable=True)
    resolved_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "time": _iso(self.time), "type": self.type, "message": self.message,
                "context": self.context, "traceback": self.traceback, "plugin": self.plugin,
                "run_id": self.run_id, "step": self.step,
                "resolved_at": _iso(self.resolved_at) if self.resolved_at else None,
                "pattern": pattern(self.message)}


_VOLATILE = re.compile(r"0x[0-9a-fA-F]+|(?<![A-Za-z_])[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?|'[^']*'|\"[^\"]*\"|/[^\s:]+")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def pattern(message: str) -> str:
    """The message with numbers, quoted values and paths masked: failures of one cause group together."""
    return _VOLATILE.sub("<*>", message)


def parse_since(value: str, now: datetime | None = None) -> datetime:
    """``2h``, ``30m``, ``1d`` (ago) or an ISO date/time (UTC unless it names an offset)."""
    now = now or datetime.now(timezone.utc)
    m = _DURATION.match(value.strip())
    if m:
        return now - timedelta(**{_UNITS[m.group(2)]: float(m.group(1))})
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise AptError(f"--since {value!r}: expected a duration like 30m, 2h, 1d or an ISO date like "
                       f"2026-01-31T12:00") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _iso(moment: datetime) -> str:
    """SQLite hands datetimes back without their offset; every stored time is UTC."""
    return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).isoformat()


def _utc_naive(moment: datetime) -> datetime:
    return moment.astimezone(timezone.utc).replace(tzinfo=None)


def _upgrade(engine: Engine) -> None:
    """Add the columns a database made by an older apt lacks (all nullable, so old rows stay valid)."""
    table = _Base.metadata.tables[ErrorRecord.__tablename__]
    have = {c["name"] for c in inspect(engine).get_columns(table.name)}
    for column in table.columns:
        if column.name in have:
            continue
        kind = column.type.compile(dialect=engine.dialect)
        try:
            with engine.begin() as conn:
                conn.execute(text(f"ALTER TABLE {table.name} ADD COLUMN {column.name} {kind}"))
        except OperationalError:  # another process added it first
            if column.name not in {c["name"] for c in inspect(engine).get_columns(table.name)}:
                raise


class ErrorStore:
    def __init__(self, path: Path | None = None) -> None:
        self.path = path or apt_home() / "errors.db"
        self.engine = create_engine(f"sqlite:///{self.path}")
        _Base.metadata.create_all(self.engine)
        _upgrade(self.engine)

    def record(self, type: str, message: str, *, context: Mapping[str, Any] | None = None,
               traceback: str = "", plugin: str | None = None, run_id: str | None = None,
               step: int | None = None) -> int:
        row = ErrorRecord(time=_utc_naive(datetime.now(timezone.utc)), type=type, message=message,
                          context=json.loads(json.dumps(dict(context or {}), default=str)),
                          traceback=traceback, plugin=plugin, run_id=run_id, step=step)
        with Session(self.engine) as session, session.begin():
            session.add(row)
            session.flush()
            return row.id

    def list(self, *, limit: int = 50, plugin: str | None = None, type: str | None = None,
             run_id: str | None = None, since: datetime | None = None,
             resolved: bool = True) -> builtins.list[dict[str, Any]]:
        """Most recent first. ``run_id`` may be a prefix (as ``apt errors list`` shows it);
        ``resolved=False`` leaves out errors marked resolved."""
        query = self._filtered(select(ErrorRecord), plugin=plugin, type=type, run_id=run_id, since=since,
                               resolved=resolved)
        with Session(self.engine) as session:
            return [r.to_dict() for r in session.scalars(query.order_by(ErrorRecord.id.desc()).limit(limit))]

    def get(self, error_id: int) -> dict[str, Any] | None:
        with Session(self.engine) as session:
            row = session.get(ErrorRecord, error_id)
            return row.to_dict() if row is not None else None

    def resolve(self, target: str) -> builtins.list[int]:
        """Mark unresolved errors resolved: one by id (``12`` or ``#12``), or every one whose masked
        pattern (as ``apt errors groups`` prints it) equals ``target`` or whose message contains it.
        Returns the ids marked."""
        now = _utc_naive(datetime.now(timezone.utc))
        with Session(self.engine) as session, session.begin():
            if re.fullmatch(r"#?\d+", target):
                candidates = [session.get(ErrorRecord, int(target.lstrip("#")))]
            else:
                candidates = list(session.scalars(select(ErrorRecord).where(ErrorRecord.resolved_at.is_(None))))
                candidates = [r for r in candidates if r is not None
                              and (pattern(r.message) == target or target in r.message)]
            ids = [r.id for r in candidates if r is not None and r.resolved_at is None]
            if ids:
                session.execute(update(ErrorRecord).where(ErrorRecord.id.in_(ids)).values(resolved_at=now))
        return ids

    def count(self, *, resolved: bool = True) -> int:
        with Session(self.engine) as session:
            return session.scalar(self._filtered(select(func.count(ErrorRecord.id)), resolved=resolved)) or 0

    def groups(self, *, resolved: bool = True) -> builtins.list[dict[str, Any]]:
        """Failures grouped by (type, plugin, pattern), most frequent first."""
        groups: dict[tuple[str, str | None, str], dict[str, Any]] = {}
        query = self._filtered(select(ErrorRecord), resolved=resolved).order_by(ErrorRecord.id)
        with Session(self.engine) as session:
            for r in session.scalars(query):
                key = (r.type, r.plugin, pattern(r.message))
                g = groups.setdefault(key, {"type": r.type, "plugin": r.plugin, "pattern": key[2], "count": 0,
                                            "first": _iso(r.time), "last": "", "example": r.message})
                g["count"] += 1
                g["last"] = _iso(r.time)
        return sorted(groups.values(), key=lambda g: -g["count"])

    def report(self) -> dict[str, Any]:
        return {"generated": datetime.now(timezone.utc).isoformat(), "groups": self.groups(),
                "errors": self.list(limit=10_000)}

    @staticmethod
    def _filtered(query: Select[Any], *, plugin: str | None = None, type: str | None = None,
                  run_id: str | None = None, since: datetime | None = None, resolved: bool = True) -> Select[Any]:
        if plugin:
            query = query.where(ErrorRecord.plugin == plugin)
        if type:
            query = query.where(ErrorRecord.type == type)
        if run_id:
            query = query.where(ErrorRecord.run_id.startswith(run_id, autoescape=True))
        if since is not None:
            query = query.where(ErrorRecord.time >= _utc_naive(since))
        if not resolved:
            query = query.where(ErrorRecord.resolved_at.is_(None))
        return query
