"""API keys and publisher keys: who may publish a package, and whose signature it must carry.

Only a sha256 of each token is stored: tokens are 256-bit random, so a fast hash is enough and
a leaked database gives away no key. Keys expire (90 days unless told otherwise) and can be
revoked; each key speaks for an owner, and a project belongs to the owner whose key created
it, so a key scoped to `apt_plugin_moe` is still no key for somebody else's `apt-plugin-moe`.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from packaging.utils import canonicalize_name
from sqlalchemy import select

from ..apx.names import name_problem
from ..database import Database
from .audit import record
from .errors import MarketError
from .models import ApiKey, ApiKeyScope, Package

__all__ = ["DEFAULT_EXPIRY", "KeyInfo", "KeyStore", "NewKey", "TOKEN_PREFIX", "hash_token", "parse_expiry"]

TOKEN_PREFIX = "aptm"
DEFAULT_EXPIRY = timedelta(days=90)
MAX_EXPIRY = timedelta(days=366)
MAX_LABEL = 200
_OWNER_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,47}\Z", re.ASCII)
_EXPIRY_RE = re.compile(r"([1-9][0-9]{0,4})([hdw])\Z", re.ASCII)
_CHALLENGE = {"WWW-Authenticate": "Bearer"}
#: A key's last use is written at most this often per address, so a busy key costs no write
#: per request while a new address still shows up in the audit log at once.
_TOUCH_EVERY = timedelta(minutes=5)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def parse_expiry(text: str) -> timedelta:
    """`90d`, `12h` or `4w`; a key that never expires is a key nobody remembers to revoke."""
    m = _EXPIRY_RE.match(text.strip())
    if not m:
        raise ValueError(f"--expires {text!r} is not a duration such as 90d, 12h or 4w")
    delta = timedelta(**{{"h": "hours", "d": "days", "w": "weeks"}[m[2]]: int(m[1])})
    if delta > MAX_EXPIRY:
        raise ValueError(f"--expires {text} is longer than {MAX_EXPIRY.days} days; create a new key when this one runs out")
    return delta


def _aware(dt: datetime | None) -> datetime | None:
    return dt.replace(tzinfo=UTC) if dt is not None and dt.tzinfo is None else dt


@dataclass(frozen=True)
class KeyInfo:
    id: int
    key_id: str
    label: str
    scopes: frozenset[str]
    owner: str = ""
    address: str | None = None

    def may_publish(self, name: str) -> bool:
        return canonicalize_name(name) in self.scopes


@dataclass(frozen=True)
class NewKey:
    token: str
    key_id: str
    owner: str
    expires_at: datetime
    warnings: list[str] = field(default_factory=list)


class KeyStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def create(
        self,
        packages: Sequence[str],
        label: str = "",
        owner: str | None = None,
        expires: timedelta = DEFAULT_EXPIRY,
    ) -> NewKey:
        """The token is in the result once; only its hash is stored. Warnings name what the
        admin may not have meant: a spelling of an existing project, or a second live key."""
        if not packages:
            raise ValueError("an API key needs at least one package in scope")
        for p in packages:
            problem = name_problem(p)
            if problem:
                raise ValueError(f"--package {problem}")
        if len(label) > MAX_LABEL or "\x00" in label:
            raise ValueError(f"--label must be at most {MAX_LABEL} characters without NUL bytes")
        if owner is not None and not _OWNER_RE.match(owner):
            raise ValueError(f"--owner {owner!r} must be 1-48 ASCII letters, digits, '.', '_' or '-'")
        if expires <= timedelta(0) or expires > MAX_EXPIRY:
            raise ValueError(f"a key must expire within {MAX_EXPIRY.days} days")
        key_id = secrets.token_hex(6)
        owner = owner or f"owner-{key_id}"
        token = f"{TOKEN_PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"
        expires_at = datetime.now(UTC) + expires
        warnings: list[str] = []
        scopes = sorted({canonicalize_name(p) for p in packages})
        with self.db.write() as s:
            for p in sorted(set(packages)):
                cname = canonicalize_name(p)
                pkg = s.scalar(select(Package).where(Package.name == cname))
                if pkg is not None and p != cname:
                    warnings.append(f"{p} normalises to the existing project {cname}")
                if pkg is not None and pkg.owner and pkg.owner != owner:
                    warnings.append(
                        f"{cname} belongs to owner {pkg.owner}, so this key cannot publish it; "
                        f"pass --owner {pkg.owner} if the key is for that owner"
                    )
                    continue
                live = [
                    k
                    for k in s.scalars(select(ApiKey).join(ApiKeyScope).where(ApiKeyScope.package == cname))
                    if not k.revoked and (_aware(k.expires_at) or expires_at) > datetime.now(UTC)
                ]
                if live:
                    owners = sorted({k.owner for k in live} - {owner})
                    warnings.append(
                        f"{cname} already has {len(live)} live key(s) ({', '.join(k.key_id for k in live)})"
                        + (f" of other owner(s) {', '.join(owners)}; whichever publishes first owns it" if owners else "")
                        + "; revoke any it replaces with 'apt market keys revoke ID'"
                    )
            key = ApiKey(key_id=key_id, key_hash=hash_token(token), label=label, owner=owner, expires_at=expires_at)
            key.scopes = [ApiKeyScope(package=p) for p in scopes]
            s.add(key)
            record(s, "key.created", key_id=key_id, owner=owner, detail=f"scope {', '.join(scopes)}; expires {expires_at:%Y-%m-%d}")
        return NewKey(token, key_id, owner, expires_at, warnings)

    def revoke(self, key_id: str) -> None:
        with self.db.write() as s:
            key = s.scalar(select(ApiKey).where(ApiKey.key_id == key_id))
            if key is None:
                raise ValueError(f"no API key with id {key_id!r}; 'apt market keys list' shows the ids")
            key.revoked = True
            record(s, "key.revoked", key_id=key_id, owner=key.owner)

    def listing(self) -> list[dict[str, Any]]:
        now = datetime.now(UTC)
        with self.db.read() as s:
            rows = []
            for k in s.scalars(select(ApiKey).order_by(ApiKey.id)):
                expires_at = _aware(k.expires_at)
                state = "revoked" if k.revoked else "expired" if expires_at and expires_at <= now else "active"
                last = _aware(k.last_used_at)
                created = _aware(k.created_at)
                rows.append(
                    {
                        "key_id": k.key_id,
                        "owner": k.owner,
                        "label": k.label,
                        "packages": sorted(sc.package for sc in k.scopes),
                        "created_at": created.isoformat() if created else None,
                        "expires_at": expires_at.isoformat() if expires_at else None,
                        "state": state,
                        "last_used_at": last.isoformat() if last else None,
                        "last_used_from": k.last_used_from,
                    }
                )
            return rows

    def authenticate(self, authorization: str | None, address: str | None = None) -> KeyInfo:
        if not authorization:
            raise MarketError(401, "unauthorized", "this needs an API key: send 'Authorization: Bearer <key>'", _CHALLENGE)
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        parts = token.split("_")
        if scheme.lower() != "bearer" or len(parts) < 3 or parts[0] != TOKEN_PREFIX or len(parts[1]) > 32:
            raise MarketError(401, "unauthorized", "the Authorization header must be 'Bearer aptm_...'", _CHALLENGE)
        now = datetime.now(UTC)
        with self.db.read() as s:
            key = s.scalar(select(ApiKey).where(ApiKey.key_id == parts[1]))
            if key is None or not hmac.compare_digest(key.key_hash, hash_token(token)):
                raise MarketError(401, "unauthorized", "the API key is not valid", _CHALLENGE)
            if key.revoked:
                raise MarketError(401, "unauthorized", f"API key {key.key_id} was revoked; ask for a new one", _CHALLENGE)
            expires_at = _aware(key.expires_at)
            if expires_at is not None and expires_at <= now:
                raise MarketError(
                    401, "unauthorized", f"API key {key.key_id} expired at {expires_at:%Y-%m-%d %H:%M}Z; ask for a new one", _CHALLENGE
                )
            info = KeyInfo(key.id, key.key_id, key.label, frozenset(sc.package for sc in key.scopes), key.owner, address)
            last = _aware(key.last_used_at)
            stale = last is None or now - last > _TOUCH_EVERY or key.last_used_from != address
        if stale:
            self._touch(info, now)
        return info

    def _touch(self, info: KeyInfo, now: datetime) -> None:
        with self.db.write() as s:
            key = s.get(ApiKey, info.id)
            if key is None:
                return
            if key.last_used_from != info.address:
                record(s, "key.used", key_id=info.key_id, owner=info.owner, address=info.address, detail="first use from this address")
            key.last_used_at = now
            key.last_used_from = (info.address or "")[:64] or None

    def set_publisher_key(self, package: str, public_key: str | None) -> None:
        """Register the Ed25519 key that must sign every future archive of `package`."""
        name = canonicalize_name(package)
        with self.db.write() as s:
            pkg = s.scalar(select(Package).where(Package.name == name))
            if pkg is None:
                pkg = Package(name=name, display_name=package, summary="")
                s.add(pkg)
            pkg.publisher_key = public_key
