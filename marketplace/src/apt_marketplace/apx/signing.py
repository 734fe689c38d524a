"""Ed25519 signatures over `apx.json`: the manifest lists the sha256 of every wheel, so a
signature on it covers the whole archive. A package with a registered publisher key only
accepts archives that key signed."""

from __future__ import annotations

import base64
import binascii
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_private_key

from .errors import ApxError
from .reader import Apx

__all__ = ["generate_signing_key", "load_signing_key", "parse_public_key", "public_key_text", "sign", "verify_signature"]


def sign(manifest_bytes: bytes, key: Ed25519PrivateKey) -> bytes:
    """The `apx.sig` entry: the base64 signature of the exact manifest bytes."""
    return base64.b64encode(key.sign(manifest_bytes)) + b"\n"


def verify_signature(apx: Apx, public_key: str) -> None:
    """Packages with a registered publisher key only accept archives that key signed."""
    key = parse_public_key(public_key)
    if apx.signature is None:
        raise ApxError(f"{apx.manifest.name} has a registered publisher key; the archive must be signed (apx.sig)")
    try:
        key.verify(apx.signature, apx.manifest_bytes)
    except InvalidSignature:
        raise ApxError("apx.sig does not verify against the publisher key of this package") from None


def parse_public_key(text: str) -> Ed25519PublicKey:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except (binascii.Error, ValueError):
        raise ApxError("publisher key must be a base64 raw Ed25519 public key (32 bytes)") from None


def generate_signing_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def public_key_text(key: Ed25519PrivateKey) -> str:
    return base64.b64encode(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ApxError(f"cannot read signing key {path}: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ApxError(f"{path} is not an Ed25519 private key")
    return key

