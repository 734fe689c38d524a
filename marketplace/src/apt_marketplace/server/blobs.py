"""Content-addressed storage on disk. A blob's name is its sha256, so a blob is written once,
never changed, and shared by every row that names it; rows are committed only after the blob
is in place, so no row ever points at a missing or half-written file."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
from pathlib import Path

from ..fsutil import atomic_writer, fsync_dir

__all__ = ["BlobStore", "SpoolFile"]

_SHA_RE = re.compile(r"^[0-9a-f]{64}$")


class SpoolFile:
    """An upload being received: hashed and counted as it streams in, durable before adoption."""

    def __init__(self, directory: Path) -> None:
        fd, name = tempfile.mkstemp(prefix="upload-", suffix=".tmp", dir=directory)
        self.path = Path(name)
        self._fh = os.fdopen(fd, "wb")
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, chunk: bytes) -> None:
        self._fh.write(chunk)
        self._hash.update(chunk)
        self.size += len(chunk)

    def finish(self) -> str:
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        return self._hash.hexdigest()

    def discard(self) -> None:
        if not self._fh.closed:
            self._fh.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.tmp = self.root / "tmp"
        self.tmp.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        if not _SHA_RE.match(sha256):
            raise ValueError(f"not a sha256: {sha256!r}")
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def spool(self) -> SpoolFile:
        return SpoolFile(self.tmp)

    def adopt(self, spool: SpoolFile, sha256: str) -> Path:
        """Move a finished upload into place; if the blob exists already the upload is dropped."""
        target = self.path(sha256)
        if target.is_file():
            spool.discard()
            os.utime(target)
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(spool.path, 0o644)
        os.replace(spool.path, target)
        fsync_dir(target.parent)
        return target

    def remove(self, sha256: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(sha256).unlink()

    def put_file(self, path: Path, sha256: str) -> None:
        """Move a spooled file of known sha256 (in this store's tmp) into place."""
        target = self.path(sha256)
        if target.is_file():
            os.utime(target)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(path, 0o644)
        os.replace(path, target)
        fsync_dir(target.parent)

    def put(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        target = self.path(sha)
        if target.is_file():
            # A fresh mtime keeps `apt market gc` off a blob a new row is about to name.
            os.utime(target)
        else:
            with atomic_writer(target) as fh:
                fh.write(data)
        return sha
