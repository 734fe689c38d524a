"""API keys and publisher keys: who may publish a package, and whose signature it must carry.

Only a sha256 of each token is stored: tokens are 256-bit random, so a fast hash is enough and
a leaked database gives away no key.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from packaging.utils import canonicalize_name
from sqlalchemy import select

from ..database import Database
from .errors import MarketError
from .models import ApiKey, ApiKeyScope, Package

__all__ = ["KeyInfo", "KeyStore", "hash_token"]

_TOKEN_PREFIX = "aptm"
_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class KeyInfo:
    id: int
    key_id: str
    label: str
    scopes: frozenset[str]

    def may_publish(self, name: str) -> bool:
        return canonicalize_name(name) in self.scopes


class KeyStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def create(self, packages: Sequence[str], label: str = "") -> str:
        """Returns the token; only its hash is stored, so this is the one chance to see it."""
        if not packages:
            raise ValueError("an API key needs at least one package in scope")
        key_id = secrets.token_hex(6)
        token = f"{_TOKEN_PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"
        with self.db.write() as s:
            key = ApiKey(key_id=key_id, key_hash=hash_token(token), label=label)
            key.scopes = [ApiKeyScope(package=canonicalize_name(p)) for p in sorted(set(packages))]
            s.add(key)
        return token

    def authenticate(self, authorization: str | None) -> KeyInfo:
        if not authorization:
            raise MarketError(401, "unauthorized", "this needs an API key: send 'Authorization: Bearer <key>'", _CHALLENGE)
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        parts = token.split("_")
        if scheme.lower() != "bearer" or len(parts) < 3 or parts[0] != _TOKEN_PREFIX:
            raise MarketError(401, "unauthorized", "the Authorization header must be 'Bearer aptm_...'", _CHALLENGE)
        with self.db.read() as s:
            key = s.scalar(select(ApiKey).where(ApiKey.key_id == parts[1]))
            if key is None or key.revoked or not hmac.compare_digest(key.key_hash, hash_token(token)):
                raise MarketError(401, "unauthorized", "the API key is not valid", _CHALLENGE)
            return KeyInfo(key.id, key.key_id, key.label, frozenset(sc.package for sc in key.scopes))

    def set_publisher_key(self, package: str, public_key: str | None) -> None:
        """Register the Ed25519 key that must sign every future archive of `package`."""
        name = canonicalize_name(package)
        with self.db.write() as s:
            pkg = s.scalar(select(Package).where(Package.name == name))
            if pkg is None:
                pkg = Package(name=name, display_name=package, summary="")
                s.add(pkg)
            pkg.publisher_key = public_key
