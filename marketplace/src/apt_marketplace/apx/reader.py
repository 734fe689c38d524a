"""Reading an archive: open it with the hardened extractor, then hold the manifest to it.

The manifest's file list must describe the archive exactly, which is what makes the manifest
(and its optional signature) speak for every byte inside.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from email.parser import BytesParser
from pathlib import Path
from typing import Any, BinaryIO

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from packaging.version import Version as Pep440Version

from ..semver import InvalidVersion, to_pep440
from .errors import ApxError
from .extract import Limits, ZipReader, wheel_metadata
from .manifest import MANIFEST, SIGNATURE, Manifest

__all__ = ["Apx", "WheelEntry", "read_apx"]


@dataclass(frozen=True)
class WheelEntry:
    """A wheel of an archive, in memory (`content`) or, for uploads, spooled to `file`."""

    path: str
    filename: str
    sha256: str
    size: int
    metadata: bytes
    requires_python: str | None
    content: bytes | None = None
    file: Path | None = None

    @property
    def data(self) -> bytes:
        if self.content is not None:
            return self.content
        assert self.file is not None
        return self.file.read_bytes()

    def open(self) -> BinaryIO:
        if self.content is not None:
            return io.BytesIO(self.content)
        assert self.file is not None
        return open(self.file, "rb")


@dataclass(frozen=True)
class Apx:
    manifest: Manifest
    manifest_bytes: bytes
    signature: bytes | None
    wheels: tuple[WheelEntry, ...]


def _check_wheel(manifest: Manifest, path: str, sha256: str, size: int, content: bytes | None, file: Path | None) -> WheelEntry:
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
    source: bytes | Path | None = content if content is not None else file
    assert source is not None
    metadata = wheel_metadata(filename, source)
    msg = BytesParser().parsebytes(metadata, headersonly=True)
    if canonicalize_name(str(msg.get("Name", ""))) != dist:
        raise ApxError(f"{path}: METADATA names {msg.get('Name')!r}, not {manifest.name!r}")
    rp = msg.get("Requires-Python")
    if rp is not None:
        text = str(rp).strip()
        try:
            if len(text) > 100 or not text.isascii() or "\x00" in text:
                raise InvalidSpecifier(text)
            SpecifierSet(text)
        except InvalidSpecifier:
            raise ApxError(f"{path}: Requires-Python {text[:80]!r} is not a PEP 440 specifier of at most 100 ASCII characters") from None
    return WheelEntry(
        path=path,
        filename=filename,
        sha256=sha256,
        size=size,
        metadata=metadata,
        requires_python=str(rp).strip() if rp else None,
        content=content,
        file=file,
    )


def _read_manifest(z: ZipReader, limits: Limits) -> tuple[Manifest, bytes]:
    info = z.infos.get(MANIFEST)
    if info is None:
        raise ApxError("archive has no apx.json manifest")
    if info.file_size > limits.max_manifest_bytes:
        raise ApxError("apx.json is too large")
    raw = z.read(MANIFEST)
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApxError(f"apx.json is not valid UTF-8 JSON: {exc}") from None
    except RecursionError:
        raise ApxError("apx.json nests too deeply; it is a flat object of strings, lists and one-level maps") from None
    manifest = Manifest.parse(doc)
    if not manifest.files:
        raise ApxError("apx.json files must map each wheels/*.whl path to its sha256")
    return manifest, raw


def read_apx(
    source: Path | bytes,
    limits: Limits | None = None,
    authorize: Callable[[Manifest], None] | None = None,
    spool_dir: Path | None = None,
) -> Apx:
    """Open and fully verify an archive; any defect raises ApxError.

    `authorize` sees the manifest before any wheel is inflated, so a request that may not
    publish the package costs no decompression. With `spool_dir`, wheels stream to files
    there (the caller removes them) instead of being held in memory.
    """
    limits = limits or Limits()
    src = Path(source) if isinstance(source, (str, Path)) else bytes(source)
    with ZipReader(src, limits, "archive") as z:
        manifest, raw = _read_manifest(z, limits)
        if authorize is not None:
            authorize(manifest)
        signature: bytes | None = None
        if SIGNATURE in z.infos:
            try:
                signature = base64.b64decode(z.read(SIGNATURE).strip(), validate=True)
            except (binascii.Error, ValueError):
                raise ApxError("apx.sig is not base64") from None
            if len(signature) != 64:
                raise ApxError("apx.sig is not an Ed25519 signature")
        listed = set(manifest.files)
        present = set(z.infos) - {MANIFEST, SIGNATURE}
        if present - listed:
            raise ApxError(f"archive contains files the manifest does not list: {', '.join(sorted(present - listed))}")
        if listed - present:
            raise ApxError(f"manifest lists files the archive lacks: {', '.join(sorted(listed - present))}")
        wheels = []
        for path in sorted(present):
            hasher = hashlib.sha256()
            content: bytes | None = None
            file: Path | None = None
            if spool_dir is None:
                content = z.read(path)
                hasher.update(content)
                size = len(content)
            else:
                fd, name = tempfile.mkstemp(prefix="wheel-", suffix=".tmp", dir=spool_dir)
                file = Path(name)
                with os.fdopen(fd, "wb") as out:

                    def write(chunk: bytes, out: BinaryIO = out, hasher: Any = hasher) -> None:
                        hasher.update(chunk)
                        out.write(chunk)

                    size = z.inflate(path, write)
            digest = hasher.hexdigest()
            if digest != manifest.files[path]:
                raise ApxError(f"{path}: sha256 {digest} does not match the manifest's {manifest.files[path]}")
            wheels.append(_check_wheel(manifest, path, digest, size, content, file))
    return Apx(manifest=manifest, manifest_bytes=raw, signature=signature, wheels=tuple(wheels))
