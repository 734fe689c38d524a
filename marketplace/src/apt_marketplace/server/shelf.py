"""Plain wheels served beside the plugins: `<data dir>/wheels/*.whl`, e.g. the apt-core wheel
that `apt market serve --with-first-party` builds, so `pip install --index-url .../simple/`
finds the core a plugin requires. They are read-only inputs of the index, not releases: no
archive, no manifest, no checks beyond the hardened reading of their METADATA."""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from email.parser import BytesParser
from pathlib import Path
from typing import Any

from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename

from ..apx.errors import ApxError
from ..apx.extract import wheel_metadata
from ..fsutil import atomic_writer

__all__ = ["WheelShelf"]


@dataclass(frozen=True)
class _Wheel:
    project: str
    version: str
    filename: str
    path: Path
    sha256: str
    size: int
    metadata_sha256: str
    requires_python: str | None
    upload_time: datetime


class WheelShelf:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._wheels: list[_Wheel] = []

    def _scan(self) -> list[_Wheel]:
        """Re-read only when the directory changed (a wheel added or replaced by rename)."""
        try:
            st = self.directory.stat()
        except FileNotFoundError:
            return []
        stamp = (st.st_mtime_ns, st.st_ino)
        with self._lock:
            if stamp == self._stamp:
                return self._wheels
            wheels = []
            for path in sorted(self.directory.glob("*.whl")):
                try:
                    name, version, _, _ = parse_wheel_filename(path.name)
                    data = path.read_bytes()
                    meta = wheel_metadata(path.name, data)
                except (InvalidWheelFilename, ApxError, OSError):
                    continue
                meta_path = path.with_name(path.name + ".metadata")
                if not meta_path.is_file() or meta_path.read_bytes() != meta:
                    with atomic_writer(meta_path) as fh:
                        fh.write(meta)
                rp = BytesParser().parsebytes(meta, headersonly=True).get("Requires-Python")
                wheels.append(
                    _Wheel(
                        project=canonicalize_name(name),
                        version=str(version),
                        filename=path.name,
                        path=path,
                        sha256=hashlib.sha256(data).hexdigest(),
                        size=len(data),
                        metadata_sha256=hashlib.sha256(meta).hexdigest(),
                        requires_python=str(rp).strip()[:100] if rp else None,
                        upload_time=datetime.fromtimestamp(path.stat().st_mtime, UTC),
                    )
                )
            self._stamp, self._wheels = stamp, wheels
            return wheels

    def projects(self) -> set[str]:
        return {w.project for w in self._scan()}

    def files(self, project: str) -> tuple[list[dict[str, Any]], list[str]]:
        wheels = [w for w in self._scan() if w.project == project]
        files = [
            {
                "filename": w.filename,
                "sha256": w.sha256,
                "size": w.size,
                "metadata_sha256": w.metadata_sha256,
                "requires_python": w.requires_python,
                "yanked": False,
                "yank_reason": None,
                "upload_time": w.upload_time,
            }
            for w in wheels
        ]
        return files, sorted({w.version for w in wheels})

    def locate(self, sha256: str, filename: str, metadata: bool) -> Path | None:
        """The wheel behind a file URL, or the METADATA written beside it for PEP 658."""
        wheel = next((w for w in self._scan() if w.sha256 == sha256 and w.filename == filename), None)
        if wheel is None:
            return None
        return wheel.path.with_name(wheel.path.name + ".metadata") if metadata else wheel.path
