"""The hardened zip reader: archives come from strangers, so reading one never trusts the zip
directory. Every entry is checked and decompressed by hand under hard caps, so lying headers,
bombs, links and paths that climb out of the archive root gain nothing."""

from __future__ import annotations

import io
import os
import re
import stat
import struct
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .errors import ApxError

__all__ = ["Limits", "ZipReader", "open_zip", "wheel_metadata"]

_CHUNK = 1 << 16


@dataclass(frozen=True)
class Limits:
    max_entries: int = 64
    max_entry_bytes: int = 128 << 20
    max_total_bytes: int = 256 << 20
    max_ratio: int = 100
    ratio_floor_bytes: int = 1 << 20
    max_manifest_bytes: int = 1 << 20


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


class ZipReader:
    """An untrusted zip: every header is checked when it is opened, and entries are inflated
    one at a time, on request, into a caller's sink. So the manifest can be read (and the
    uploader's scope checked) before any wheel is inflated, and a wheel can be streamed to disk
    instead of held in memory."""

    def __init__(self, source: Path | bytes, limits: Limits, what: str) -> None:
        self.limits = limits
        self.what = what
        self._fh: BinaryIO = open(source, "rb") if isinstance(source, Path) else io.BytesIO(source)
        try:
            count = _eocd_entry_count(self._fh)
            if count > limits.max_entries:
                raise ApxError(f"{what} has {count} entries; the limit is {limits.max_entries}")
            self._fh.seek(0, os.SEEK_END)
            self.archive_size = self._fh.tell()
            self._fh.seek(0)
            try:
                self._zf = zipfile.ZipFile(self._fh)
            except (zipfile.BadZipFile, ValueError, struct.error) as exc:
                raise ApxError(f"{what} is not a valid zip: {exc}") from None
            self.infos = {info.filename: info for info in self._check_headers(self._zf.infolist())}
        except BaseException:
            self._fh.close()
            raise
        self.total = 0

    def _check_headers(self, infos: list[zipfile.ZipInfo]) -> list[zipfile.ZipInfo]:
        limits, what = self.limits, self.what
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
        return infos

    def names(self) -> list[str]:
        return list(self.infos)

    def inflate(self, name: str, write: Callable[[bytes], object]) -> int:
        """Decompress one entry into `write`, counting real bytes, so lying headers gain nothing."""
        info = self.infos[name]
        limits, what = self.limits, self.what
        cap = min(info.file_size, limits.max_entry_bytes)
        written = 0
        try:
            with self._zf.open(info) as src:
                while chunk := src.read(_CHUNK):
                    written += len(chunk)
                    self.total += len(chunk)
                    if written > cap or self.total > limits.max_total_bytes:
                        raise ApxError(f"{what} entry {name!r} unpacks beyond its declared or allowed size")
                    if written > limits.ratio_floor_bytes and written > limits.max_ratio * max(info.compress_size, 1):
                        raise ApxError(f"{what} entry {name!r} expands more than {limits.max_ratio}x its compressed size")
                    write(chunk)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError) as exc:
            raise ApxError(f"{what} entry {name!r} is corrupt: {exc}") from None
        if written != info.file_size:
            raise ApxError(f"{what} entry {name!r} is shorter than its header says")
        if self.total > limits.ratio_floor_bytes and self.total > limits.max_ratio * max(self.archive_size, 1):
            raise ApxError(f"{what} expands more than {limits.max_ratio}x its size")
        return written

    def read(self, name: str) -> bytes:
        buf = io.BytesIO()
        self.inflate(name, buf.write)
        return buf.getvalue()

    def close(self) -> None:
        self._zf.close()
        self._fh.close()

    def __enter__(self) -> ZipReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_zip(data: bytes, limits: Limits, what: str) -> dict[str, bytes]:
    """Every entry in memory: for small zips only (tests and tools), never for uploads."""
    with ZipReader(data, limits, what) as z:
        return {name: z.read(name) for name in z.names()}


_WHEEL_LIMITS = Limits(max_entries=10_000, max_entry_bytes=128 << 20, max_total_bytes=512 << 20)


def wheel_metadata(filename: str, source: bytes | Path) -> bytes:
    """Pull METADATA out of a wheel (under the same suspicion as the archive) for PEP 658."""
    fh: BinaryIO = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")
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
    finally:
        fh.close()


