"""Persistent record of failures (plugin hook errors, NaN/Inf steps, crashes).

Stored with SQLAlchemy in ``APT_HOME/errors.db`` so that ``apt errors`` can show what went
wrong across runs, group recurring failures by pattern and export a report.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import JSON, DateTime, Integer, String, Text, create_engine, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

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

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "time": self.time.isoformat(), "type": self.type, "message": self.message,
                "context": self.context, "traceback": self.traceback, "plugin": self.plugin,
                "run_id": self.run_id, "pattern": pattern(self.message)}


_VOLATILE = re.compile(r"0x[0-9a-fA-F]+|(?<![A-Za-z_])[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?|'[^']*'|\"[^\"]*\"|/[^\s:]+")


def pattern(message: str) -> str:
    """The message with numbers, quoted values and paths masked: failures of one cause group together."""
    return _VOLATILE.sub("<*>", message)


class ErrorStore:
    def __init__(self, path: Path | None = None) -> None:
        self.path = path or apt_home() / "errors.db"
        self.engine = create_engine(f"sqlite:///{self.path}")
        _Base.metadata.create_all(self.engine)

    def record(self, type: str, message: str, *, context: Mapping[str, Any] | None = None,
               traceback: str = "", plugin: str | None = None, run_id: str | None = None) -> int:
        row = ErrorRecord(time=datetime.now(timezone.utc), type=type, message=message,
                          context=json.loads(json.dumps(dict(context or {}), default=str)),
                          traceback=traceback, plugin=plugin, run_id=run_id)
        with Session(self.engine) as session, session.begin():
            session.add(row)
            session.flush()
            return row.id

    def list(self, *, limit: int = 50, plugin: str | None = None, type: str | None = None,
             run_id: str | None = None) -> list[dict[str, Any]]:
        query = select(ErrorRecord).order_by(ErrorRecord.id.desc()).limit(limit)
        if plugin:
            query = query.where(ErrorRecord.plugin == plugin)
        if type:
            query = query.where(ErrorRecord.type == type)
        if run_id:
            query = query.where(ErrorRecord.run_id == run_id)
        with Session(self.engine) as session:
            return [r.to_dict() for r in session.scalars(query)]

    def groups(self) -> list[dict[str, Any]]:
        """Failures grouped by (type, plugin, pattern), most frequent first."""
        groups: dict[tuple[str, str | None, str], dict[str, Any]] = {}
        with Session(self.engine) as session:
            for r in session.scalars(select(ErrorRecord).order_by(ErrorRecord.id)):
                key = (r.type, r.plugin, pattern(r.message))
                g = groups.setdefault(key, {"type": r.type, "plugin": r.plugin, "pattern": key[2], "count": 0,
                                            "first": r.time.isoformat(), "last": "", "example": r.message})
                g["count"] += 1
                g["last"] = r.time.isoformat()
        return sorted(groups.values(), key=lambda g: -g["count"])

    def report(self) -> dict[str, Any]:
        return {"generated": datetime.now(timezone.utc).isoformat(), "groups": self.groups(),
                "errors": self.list(limit=10_000)}
