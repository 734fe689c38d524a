"""Database tables. Names are stored canonicalized (PEP 503) so lookups never depend on spelling."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

__all__ = [
    "ApiKey",
    "ApiKeyScope",
    "AuditEvent",
    "Base",
    "DeletedVersion",
    "Dependency",
    "Package",
    "Provide",
    "Rating",
    "Release",
    "ReleaseFile",
]


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    """Shared metadata, so `create_all` makes every table at start-up."""


class Package(Base):
    __tablename__ = "packages"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True, index=True)
    display_name: Mapped[str] = mapped_column(String(100))
    summary: Mapped[str] = mapped_column(String(512), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    downloads: Mapped[int] = mapped_column(BigInteger, default=0)
    publisher_key: Mapped[str | None] = mapped_column(String(64), nullable=True)
    #: The publisher identity of the key that created the project; only its keys may publish.
    owner: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    #: "ok", or "held" while a look-alike of another owner's project waits for `apt market review`.
    review: Mapped[str] = mapped_column(String(16), default="ok", server_default="ok")
    review_reason: Mapped[str | None] = mapped_column(Text, nullable=True)

    releases: Mapped[list[Release]] = relationship(back_populates="package", cascade="all, delete-orphan")


class Release(Base):
    __tablename__ = "releases"
    __table_args__ = (UniqueConstraint("package_id", "version_key", name="uq_release_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    package_id: Mapped[int] = mapped_column(ForeignKey("packages.id", ondelete="CASCADE"), index=True)
    version: Mapped[str] = mapped_column(String(256))
    version_key: Mapped[str] = mapped_column(String(256))
    summary: Mapped[str] = mapped_column(String(512), default="")
    core: Mapped[str] = mapped_column(String(256), default="*")
    python: Mapped[str] = mapped_column(String(100), default="")
    sandbox: Mapped[str] = mapped_column(String(16), default="allowed")
    yanked: Mapped[bool] = mapped_column(Boolean, default=False)
    yank_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size: Mapped[int] = mapped_column(BigInteger)
    manifest: Mapped[dict[str, Any]] = mapped_column(JSON)
    signed: Mapped[bool] = mapped_column(Boolean, default=False)
    uploaded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    uploader: Mapped[str] = mapped_column(String(64))
    #: published | quarantined (checks pending) | failed | held (name review); only
    #: published releases are visible to search, resolve, downloads and the simple index.
    status: Mapped[str] = mapped_column(String(16), default="published", server_default="published", index=True)
    status_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    checks: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, nullable=True)
    downloads: Mapped[int] = mapped_column(BigInteger, default=0)

    package: Mapped[Package] = relationship(back_populates="releases")
    dependencies: Mapped[list[Dependency]] = relationship(cascade="all, delete-orphan", lazy="selectin")
    provides: Mapped[list[Provide]] = relationship(cascade="all, delete-orphan", lazy="selectin")
    files: Mapped[list[ReleaseFile]] = relationship(cascade="all, delete-orphan", lazy="selectin")


class Dependency(Base):
    __tablename__ = "dependencies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    release_id: Mapped[int] = mapped_column(ForeignKey("releases.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100), index=True)
    range: Mapped[str] = mapped_column(String(256))


class Provide(Base):
    __tablename__ = "provides"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    release_id: Mapped[int] = mapped_column(ForeignKey("releases.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(64), index=True)
    name: Mapped[str] = mapped_column(String(64))


class ReleaseFile(Base):
    """A wheel inside an archive, served by the simple index under its own sha256."""

    __tablename__ = "release_files"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    release_id: Mapped[int] = mapped_column(ForeignKey("releases.id", ondelete="CASCADE"), index=True)
    filename: Mapped[str] = mapped_column(String(255), unique=True)
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    metadata_sha256: Mapped[str] = mapped_column(String(64))
    requires_python: Mapped[str | None] = mapped_column(String(100), nullable=True)


class ApiKey(Base):
    """Only a sha256 of the token is kept: tokens are 256-bit random, so a fast hash is enough."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key_id: Mapped[str] = mapped_column(String(32), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    label: Mapped[str] = mapped_column(String(200), default="")
    owner: Mapped[str] = mapped_column(String(64), default="", server_default="", index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    last_used_from: Mapped[str | None] = mapped_column(String(64), nullable=True)

    scopes: Mapped[list[ApiKeyScope]] = relationship(cascade="all, delete-orphan", lazy="selectin")


class ApiKeyScope(Base):
    __tablename__ = "api_key_scopes"

    api_key_id: Mapped[int] = mapped_column(ForeignKey("api_keys.id", ondelete="CASCADE"), primary_key=True)
    package: Mapped[str] = mapped_column(String(100), primary_key=True)


class Rating(Base):
    __tablename__ = "ratings"
    __table_args__ = (
        UniqueConstraint("package_id", "api_key_id", name="uq_rating_per_key"),
        CheckConstraint("score >= 1 AND score <= 5", name="ck_rating_score"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    package_id: Mapped[int] = mapped_column(ForeignKey("packages.id", ondelete="CASCADE"), index=True)
    api_key_id: Mapped[int] = mapped_column(ForeignKey("api_keys.id", ondelete="CASCADE"))
    score: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class DeletedVersion(Base):
    """A deleted version stays burnt: reusing it would let the same name@version mean two things."""

    __tablename__ = "deleted_versions"

    package: Mapped[str] = mapped_column(String(100), primary_key=True)
    version_key: Mapped[str] = mapped_column(String(256), primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64))
    deleted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AuditEvent(Base):
    """Who did what from where: publishes, yanks, deletions, key creation, revocation and use."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    action: Mapped[str] = mapped_column(String(32))
    key_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    owner: Mapped[str | None] = mapped_column(String(64), nullable=True)
    package: Mapped[str | None] = mapped_column(String(100), nullable=True, index=True)
    version: Mapped[str | None] = mapped_column(String(256), nullable=True)
    address: Mapped[str | None] = mapped_column(String(64), nullable=True)
    detail: Mapped[str] = mapped_column(Text, default="")
