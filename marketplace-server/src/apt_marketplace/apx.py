"""The `.apx` plugin archive: a zip holding `apx.json` and `wheels/*.whl`.

Archives come from strangers, so reading one never trusts the zip directory: every entry is
checked and decompressed by hand under hard caps, and the manifest's file list must describe
the archive exactly, which is what makes the manifest (and its optional Ed25519 signature)
speak for every byte inside.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import os
import re
import stat
import struct
import subprocess
import sys
import tempfile
import tomllib
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.parser import BytesParser
from pathlib import Path
from typing import Any, BinaryIO

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from packaging.version import Version as Pep440Version

from .fsutil import atomic_writer
from .semver import InvalidRange, InvalidVersion, from_pep440, parse_range, parse_version, to_pep440

__all__ = [
    "ApxError",
    "Apx",
    "Limits",
    "Manifest",
    "WheelEntry",
    "archive_filename",
    "generate_signing_key",
    "load_signing_key",
    "parse_public_key",
    "pack",
    "public_key_text",
    "read_apx",
    "verify_signature",
    "write_apx",
]

MANIFEST = "apx.json"
SIGNATURE = "apx.sig"
FORMAT = 1
_NAME_RE = re.compile(r"^([A-Z0-9]|[A-Z0-9][A-Z0-9._-]*[A-Z0-9])$", re.IGNORECASE)
_PROVIDES_RE = re.compile(r"^[a-z][a-z0-9_]*\.[a-z0-9][a-z0-9_]*$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_WHEEL_PATH_RE = re.compile(r"^wheels/[A-Za-z0-9._+-]+\.whl$")
_FIXED_DATE = (2020, 1, 1, 0, 0, 0)
_CHUNK = 1 << 16


class ApxError(ValueError):
    """An archive or project that cannot be accepted; the message says what to fix."""


@dataclass(frozen=True)
class Limits:
    max_entries: int = 64
    max_entry_bytes: int = 128 << 20
    max_total_bytes: int = 256 << 20
    max_ratio: int = 100
    ratio_floor_bytes: int = 1 << 20
    max_manifest_bytes: int = 1 << 20


@dataclass(frozen=True)
class Manifest:
    name: str
    version: str
    summary: str = ""
    provides: tuple[str, ...] = ()
    requires: Mapping[str, str] = field(default_factory=dict)
    core: str = "*"
    python: str = ""
    sandbox: str = "allowed"
    files: Mapping[str, str] = field(default_factory=dict)

    @property
    def canonical_name(self) -> str:
        return canonicalize_name(self.name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "name": self.name,
            "version": self.version,
            "summary": self.summary,
            "provides": list(self.provides),
            "requires": dict(sorted(self.requires.items())),
            "core": self.core,
            "python": self.python,
            "sandbox": self.sandbox,
            "files": dict(sorted(self.files.items())),
        }

    def to_json(self) -> bytes:
        return (json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def from_dict(cls, data: Any) -> Manifest:
        """Validate every field, because the server stores and indexes what this returns."""
        if not isinstance(data, dict):
            raise ApxError("apx.json must hold a JSON object")
        known = {"format", "name", "version", "summary", "provides", "requires", "core", "python", "sandbox", "files"}
        extra = set(data) - known
        if extra:
            raise ApxError(f"apx.json has unknown fields: {', '.join(sorted(extra))}")
        if data.get("format", FORMAT) != FORMAT:
            raise ApxError(f"apx.json format {data.get('format')!r} is not supported (expected {FORMAT})")
        name = data.get("name")
        if not isinstance(name, str) or len(name) > 100 or not _NAME_RE.match(name):
            raise ApxError(f"apx.json name {name!r} is not a valid package name")
        version = data.get("version")
        try:
            parse_version(version)
        except InvalidVersion as exc:
            raise ApxError(f"apx.json version: {exc}") from None
        summary = data.get("summary", "")
        if not isinstance(summary, str) or len(summary) > 512:
            raise ApxError("apx.json summary must be a string of at most 512 characters")
        provides = data.get("provides", [])
        if not isinstance(provides, list) or len(provides) > 64:
            raise ApxError("apx.json provides must be a list of 'kind.name' strings")
        for item in provides:
            if not isinstance(item, str) or not _PROVIDES_RE.match(item):
                raise ApxError(f"apx.json provides entry {item!r} is not 'kind.name' in lower case")
        if len(set(provides)) != len(provides):
            raise ApxError("apx.json provides lists an entry twice")
        requires = data.get("requires", {})
        if not isinstance(requires, dict) or len(requires) > 64:
            raise ApxError("apx.json requires must map plugin names to semver ranges")
        for dep, rng in requires.items():
            if not _NAME_RE.match(dep) or len(dep) > 100:
                raise ApxError(f"apx.json requires names {dep!r}, which is not a valid package name")
            if canonicalize_name(dep) == canonicalize_name(name):
                raise ApxError("apx.json requires the package itself")
            try:
                parse_range(rng)
            except InvalidRange as exc:
                raise ApxError(f"apx.json requires {dep}: {exc}") from None
        if len({canonicalize_name(d) for d in requires}) != len(requires):
            raise ApxError("apx.json requires names one package twice")
        core = data.get("core", "*")
        try:
            parse_range(core)
        except InvalidRange as exc:
            raise ApxError(f"apx.json core: {exc}") from None
        python = data.get("python", "")
        if not isinstance(python, str) or len(python) > 100:
            raise ApxError("apx.json python must be a PEP 440 specifier such as '>=3.10'")
        try:
            SpecifierSet(python)
        except InvalidSpecifier:
            raise ApxError(f"apx.json python {python!r} is not a PEP 440 specifier such as '>=3.10'") from None
        sandbox = data.get("sandbox", "allowed")
        if sandbox not in ("required", "allowed"):
            raise ApxError("apx.json sandbox must be 'required' or 'allowed'")
        files = data.get("files")
        if not isinstance(files, dict) or not files:
            raise ApxError("apx.json files must map each wheels/*.whl path to its sha256")
        for path, digest in files.items():
            if not isinstance(path, str) or not _WHEEL_PATH_RE.match(path):
                raise ApxError(f"apx.json files lists {path!r}; only wheels/<name>.whl entries are allowed")
            if not isinstance(digest, str) or not _SHA_RE.match(digest):
                raise ApxError(f"apx.json files: {path} needs a lower-case hex sha256")
        return cls(
            name=name,
            version=version,
            summary=summary,
            provides=tuple(provides),
            requires=dict(requires),
            core=core,
            python=python,
            sandbox=sandbox,
            files=dict(files),
        )


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


def archive_filename(name: str, version: str) -> str:
    return f"{canonicalize_name(name)}-{version}.apx"


def _eocd_entry_count(fh: BinaryIO) -> int:
    fh.seek(0, os.SEEK_END)
    size = fh.tell()
    tail_len = min(size, 22 + 0xFFFF)
    fh.seek(size - tail_len)
    tail = fh.read(tail_len)
    pos = tail.rfind(b"PK\x05\x06")
    if pos < 0 or len(tail) - pos < 22:
        raise ApxError("not a zip archive (no end-of-central-directory record)")
    (_, _, _, _, total, _, _, _) = struct.unpack("<4sHHHHIIH", tail[pos : pos + 22])
    fh.seek(0)
    return total


def _check_name(name: str, seen: set[str], folded: set[str]) -> None:
    if not name or "\x00" in name or any(ord(c) < 32 for c in name):
        raise ApxError(f"archive entry {name!r} has an empty or control-character name")
    if "\\" in name:
        raise ApxError(f"archive entry {name!r} contains a backslash")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise ApxError(f"archive entry {name!r} is an absolute path")
    parts = name.split("/")
    if ".." in parts:
        raise ApxError(f"archive entry {name!r} points outside the archive root ('..')")
    if any(p in ("", ".") for p in parts):
        raise ApxError(f"archive entry {name!r} is a directory or has an empty path component")
    if name in seen:
        raise ApxError(f"archive entry {name!r} appears twice")
    if name.casefold() in folded:
        raise ApxError(f"archive entry {name!r} collides with another entry on a case-insensitive disk")
    seen.add(name)
    folded.add(name.casefold())


def _safe_entries(zf: zipfile.ZipFile, limits: Limits, archive_size: int, what: str) -> dict[str, bytes]:
    """Decompress every entry by hand, counting real bytes, so lying headers gain nothing."""
    infos = zf.infolist()
    if len(infos) > limits.max_entries:
        raise ApxError(f"{what} has {len(infos)} entries; the limit is {limits.max_entries}")
    seen: set[str] = set()
    folded: set[str] = set()
    declared = 0
    for info in infos:
        _check_name(info.filename, seen, folded)
        if info.flag_bits & 0x1:
            raise ApxError(f"{what} entry {info.filename!r} is encrypted")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise ApxError(f"{what} entry {info.filename!r} uses compression method {info.compress_type}; only stored and deflated are allowed")
        mode = info.external_attr >> 16
        if info.create_system == 3 and mode and stat.S_IFMT(mode) not in (0, stat.S_IFREG):
            kind = "a symlink" if stat.S_ISLNK(mode) else "a special file"
            raise ApxError(f"{what} entry {info.filename!r} is {kind}; only regular files are allowed")
        if info.external_attr & 0x10:
            raise ApxError(f"{what} entry {info.filename!r} is a directory")
        if info.file_size > limits.max_entry_bytes:
            raise ApxError(f"{what} entry {info.filename!r} unpacks to {info.file_size} bytes; the limit is {limits.max_entry_bytes}")
        declared += info.file_size
        if declared > limits.max_total_bytes:
            raise ApxError(f"{what} unpacks beyond the {limits.max_total_bytes}-byte limit")
    out: dict[str, bytes] = {}
    total = 0
    for info in infos:
        cap = min(info.file_size, limits.max_entry_bytes)
        buf = io.BytesIO()
        written = 0
        try:
            with zf.open(info) as src:
                while True:
                    chunk = src.read(_CHUNK)
                    if not chunk:
                        break
                    written += len(chunk)
                    total += len(chunk)
                    if written > cap or total > limits.max_total_bytes:
                        raise ApxError(f"{what} entry {info.filename!r} unpacks beyond its declared or allowed size")
                    if written > limits.ratio_floor_bytes and written > limits.max_ratio * max(info.compress_size, 1):
                        raise ApxError(
                            f"{what} entry {info.filename!r} expands more than {limits.max_ratio}x its compressed size"
                        )
                    buf.write(chunk)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError) as exc:
            raise ApxError(f"{what} entry {info.filename!r} is corrupt: {exc}") from None
        if written != info.file_size:
            raise ApxError(f"{what} entry {info.filename!r} is shorter than its header says")
        out[info.filename] = buf.getvalue()
    if total > limits.ratio_floor_bytes and total > limits.max_ratio * max(archive_size, 1):
        raise ApxError(f"{what} expands more than {limits.max_ratio}x its size")
    return out


def _open_zip(data: bytes, limits: Limits, what: str) -> dict[str, bytes]:
    fh = io.BytesIO(data)
    count = _eocd_entry_count(fh)
    if count > limits.max_entries:
        raise ApxError(f"{what} has {count} entries; the limit is {limits.max_entries}")
    try:
        with zipfile.ZipFile(fh) as zf:
            return _safe_entries(zf, limits, len(data), what)
    except zipfile.BadZipFile as exc:
        raise ApxError(f"{what} is not a valid zip: {exc}") from None
    except (ValueError, struct.error) as exc:
        if isinstance(exc, ApxError):
            raise
        raise ApxError(f"{what} is not a valid zip: {exc}") from None


_WHEEL_LIMITS = Limits(max_entries=10_000, max_entry_bytes=128 << 20, max_total_bytes=512 << 20)


def _wheel_metadata(filename: str, data: bytes) -> bytes:
    """Pull METADATA out of a wheel (under the same suspicion as the archive) for PEP 658."""
    fh = io.BytesIO(data)
    try:
        if _eocd_entry_count(fh) > _WHEEL_LIMITS.max_entries:
            raise ApxError(f"wheel {filename} has too many entries")
        with zipfile.ZipFile(fh) as zf:
            names = [i.filename for i in zf.infolist()]
            seen: set[str] = set()
            for info in zf.infolist():
                if info.filename in seen:
                    raise ApxError(f"wheel {filename} has the entry {info.filename!r} twice")
                seen.add(info.filename)
                mode = info.external_attr >> 16
                if info.create_system == 3 and mode and stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
                    raise ApxError(f"wheel {filename} entry {info.filename!r} is a symlink or special file")
                if info.filename.startswith("/") or ".." in info.filename.split("/") or "\\" in info.filename:
                    raise ApxError(f"wheel {filename} entry {info.filename!r} points outside the install root")
            meta = [n for n in names if re.fullmatch(r"[^/]+\.dist-info/METADATA", n)]
            if len(meta) != 1:
                raise ApxError(f"wheel {filename} must contain exactly one .dist-info/METADATA")
            info = zf.getinfo(meta[0])
            if info.file_size > 4 << 20:
                raise ApxError(f"wheel {filename} METADATA is too large")
            with zf.open(info) as src:
                body = src.read(info.file_size + 1)
            return body
    except zipfile.BadZipFile as exc:
        raise ApxError(f"wheel {filename} is not a valid zip: {exc}") from None


def _check_wheel(manifest: Manifest, path: str, data: bytes) -> WheelEntry:
    filename = path.split("/", 1)[1]
    try:
        dist, wheel_version, _, _ = parse_wheel_filename(filename)
    except InvalidWheelFilename as exc:
        raise ApxError(f"{path}: {exc}") from None
    if dist != manifest.canonical_name:
        raise ApxError(f"{path} is a wheel of {dist!r}; an archive may only carry wheels of {manifest.canonical_name!r}")
    try:
        expected = Pep440Version(to_pep440(manifest.version))
    except InvalidVersion as exc:
        raise ApxError(str(exc)) from None
    if wheel_version != expected:
        raise ApxError(f"{path} has version {wheel_version}, but the manifest says {manifest.version} ({expected})")
    metadata = _wheel_metadata(filename, data)
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
    entries = _open_zip(data, limits, "archive")
    if MANIFEST not in entries:
        raise ApxError("archive has no apx.json manifest")
    raw = entries.pop(MANIFEST)
    if len(raw) > limits.max_manifest_bytes:
        raise ApxError("apx.json is too large")
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApxError(f"apx.json is not valid UTF-8 JSON: {exc}") from None
    manifest = Manifest.from_dict(doc)
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
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return base64.b64encode(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        key = load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ApxError(f"cannot read signing key {path}: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ApxError(f"{path} is not an Ed25519 private key")
    return key


def _zinfo(name: str, compress: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=_FIXED_DATE)
    info.compress_type = compress
    info.create_system = 3
    info.external_attr = (stat.S_IFREG | 0o644) << 16
    return info


def write_apx(
    out_path: Path,
    manifest: Manifest,
    wheels: Mapping[str, bytes],
    signing_key: Ed25519PrivateKey | None = None,
) -> Path:
    """Write deterministically (fixed timestamps and order) so re-packing the same wheel gives
    the same bytes, which is what makes a repeated publish a harmless no-op."""
    files = {f"wheels/{fn}": hashlib.sha256(body).hexdigest() for fn, body in wheels.items()}
    manifest = Manifest(**{**manifest.__dict__, "files": files})
    Manifest.from_dict(manifest.to_dict())
    raw = manifest.to_json()
    out_path = Path(out_path)
    with atomic_writer(out_path) as fh:
        with zipfile.ZipFile(fh, "w") as zf:
            zf.writestr(_zinfo(MANIFEST, zipfile.ZIP_DEFLATED), raw)
            if signing_key is not None:
                zf.writestr(_zinfo(SIGNATURE, zipfile.ZIP_STORED), base64.b64encode(signing_key.sign(raw)) + b"\n")
            for fn in sorted(wheels):
                zf.writestr(_zinfo(f"wheels/{fn}", zipfile.ZIP_STORED), wheels[fn])
    return out_path


def _project_table(project_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    path = project_dir / "pyproject.toml"
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ApxError(f"{project_dir} has no pyproject.toml; point pack at a plugin project directory") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ApxError(f"{path} is not valid TOML: {exc}") from None
    project = doc.get("project")
    if not isinstance(project, dict):
        raise ApxError(f"{path} has no [project] table")
    tool = doc.get("tool", {}).get("apt")
    if not isinstance(tool, dict):
        raise ApxError(f"{path} has no [tool.apt] table; add one with provides, requires, core and sandbox")
    return project, tool


def manifest_from_project(project_dir: Path) -> Manifest:
    project, tool = _project_table(Path(project_dir))
    unknown = set(tool) - {"provides", "requires", "core", "sandbox"}
    if unknown:
        raise ApxError(f"[tool.apt] has unknown keys: {', '.join(sorted(unknown))}")
    name = project.get("name")
    version = project.get("version")
    if not isinstance(version, str):
        raise ApxError("[project] version must be static in pyproject.toml (dynamic versions are not packed)")
    try:
        semver = str(from_pep440(version))
    except InvalidVersion as exc:
        raise ApxError(str(exc)) from None
    entry_points = project.get("entry-points", {}).get("apt.providers", {})
    declared = sorted(entry_points) if isinstance(entry_points, dict) else []
    provides = tool.get("provides", declared)
    if not isinstance(provides, list):
        raise ApxError("[tool.apt] provides must be a list of 'kind.name'")
    if declared and sorted(provides) != declared:
        raise ApxError(
            f"[tool.apt] provides {sorted(provides)} differs from the apt.providers entry points {declared}"
        )
    if "core" not in tool:
        raise ApxError("[tool.apt] needs core = \"<range of apt-core>\", for example core = \"^2.0\"")
    data = {
        "name": name,
        "version": semver,
        "summary": project.get("description", ""),
        "provides": provides,
        "requires": tool.get("requires", {}),
        "core": tool["core"],
        "python": project.get("requires-python", ""),
        "sandbox": tool.get("sandbox", "allowed"),
        "files": {"wheels/placeholder.whl": "0" * 64},
    }
    return Manifest.from_dict(data)


def _build_wheel(project_dir: Path, dest: Path, build_isolation: bool) -> Path:
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", str(dest)]
    if not build_isolation:
        cmd.append("--no-build-isolation")
    cmd.append(str(project_dir))
    env = {**os.environ, "SOURCE_DATE_EPOCH": os.environ.get("SOURCE_DATE_EPOCH", "1577836800")}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
        raise ApxError("building the wheel failed:\n" + "\n".join(tail))
    built = sorted(dest.glob("*.whl"))
    if len(built) != 1:
        raise ApxError(f"expected one wheel from {project_dir}, got {[p.name for p in built]}")
    return built[0]


def pack(
    project_dir: Path,
    out_dir: Path,
    *,
    build_isolation: bool = True,
    signing_key: Ed25519PrivateKey | None = None,
) -> Path:
    """Build the project's wheel and wrap it with a manifest read from pyproject.toml."""
    project_dir = Path(project_dir).resolve()
    manifest = manifest_from_project(project_dir)
    with tempfile.TemporaryDirectory(prefix="apx-wheel-") as tmp:
        wheel = _build_wheel(project_dir, Path(tmp), build_isolation)
        wheels = {wheel.name: wheel.read_bytes()}
    out = Path(out_dir) / archive_filename(manifest.name, manifest.version)
    write_apx(out, manifest, wheels, signing_key)
    read_apx(out)
    return out
