"""Reading an archive: open it with the hardened extractor, then hold the manifest to it.

The manifest's file list must describe the archive exactly, which is what makes the manifest
(and its optional signature) speak for every byte inside.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from email.parser import BytesParser
from pathlib import Path

from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from packaging.version import Version as Pep440Version

from ..semver import InvalidVersion, to_pep440
from .errors import ApxError
from .extract import Limits, open_zip, wheel_metadata
from .manifest import MANIFEST, SIGNATURE, Manifest

__all__ = ["Apx", "WheelEntry", "read_apx"]


@dataclass(frozen=True)
class WheelEntry:
    path: str
    filename: str
    data: bytes
    sha256: str
    metadata: bytes
    requires_python: str | None

    @property
    def size(self) -> int:
        return len(self.data)


@dataclass(frozen=True)
class Apx:
    manifest: Manifest
    manifest_bytes: bytes
    signature: bytes | None
    wheels: tuple[WheelEntry, ...]


def _check_wheel(manifest: Manifest, path: str, data: bytes) -> WheelEntry:
    filename = path.split("/", 1)[1]
    try:
        dist, wheel_version, _, _ = parse_wheel_filename(filename)
    except InvalidWheelFilename as exc:
        raise ApxError(f"{path}: {exc}") from None
    if dist != manifest.canonical_name:
        raise ApxError(f"{path} is a wheel of {dist!r}; an archive may only carry wheels of {manifest.canonical_name!r}")
    try:
        expected = Pep440Version(to_pep440(manifest.semver))
    except InvalidVersion as exc:
        raise ApxError(str(exc)) from None
    if wheel_version != expected:
        raise ApxError(f"{path} has version {wheel_version}, but the manifest says {manifest.version} ({expected})")
    metadata = wheel_metadata(filename, data)
    msg = BytesParser().parsebytes(metadata, headersonly=True)
    if canonicalize_name(str(msg.get("Name", ""))) != dist:
        raise ApxError(f"{path}: METADATA names {msg.get('Name')!r}, not {manifest.name!r}")
    rp = msg.get("Requires-Python")
    return WheelEntry(
        path=path,
        filename=filename,
        data=data,
        sha256=hashlib.sha256(data).hexdigest(),
        metadata=metadata,
        requires_python=str(rp).strip() if rp else None,
    )


def read_apx(source: Path | bytes, limits: Limits | None = None) -> Apx:
    """Open and fully verify an archive; any defect raises ApxError and nothing is written."""
    limits = limits or Limits()
    data = Path(source).read_bytes() if isinstance(source, (str, Path)) else bytes(source)
    entries = open_zip(data, limits, "archive")
    if MANIFEST not in entries:
        raise ApxError("archive has no apx.json manifest")
    raw = entries.pop(MANIFEST)
    if len(raw) > limits.max_manifest_bytes:
        raise ApxError("apx.json is too large")
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApxError(f"apx.json is not valid UTF-8 JSON: {exc}") from None
    manifest = Manifest.parse(doc)
    if not manifest.files:
        raise ApxError("apx.json files must map each wheels/*.whl path to its sha256")
    signature = entries.pop(SIGNATURE, None)
    if signature is not None:
        try:
            signature = base64.b64decode(signature.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise ApxError("apx.sig is not base64") from None
        if len(signature) != 64:
            raise ApxError("apx.sig is not an Ed25519 signature")
    listed = set(manifest.files)
    present = set(entries)
    if present - listed:
        raise ApxError(f"archive contains files the manifest does not list: {', '.join(sorted(present - listed))}")
    if listed - present:
        raise ApxError(f"manifest lists files the archive lacks: {', '.join(sorted(listed - present))}")
    wheels = []
    for path in sorted(entries):
        digest = hashlib.sha256(entries[path]).hexdigest()
        if digest != manifest.files[path]:
            raise ApxError(f"{path}: sha256 {digest} does not match the manifest's {manifest.files[path]}")
        wheels.append(_check_wheel(manifest, path, entries[path]))
    return Apx(manifest=manifest, manifest_bytes=raw, signature=signature, wheels=tuple(wheels))


