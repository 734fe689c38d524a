"""Download cache of `.apx` archives under `$APT_HOME/market/cache`, named by sha256.

Rollback must work with the marketplace unreachable, so every archive that was ever installed
stays here. A file's name is its content hash and every read re-hashes it: a damaged file is
dropped and reported as missing instead of being installed.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from pathlib import Path

from ..fsutil import atomic_writer

__all__ = ["ArchiveCache"]

_SHA_RE = re.compile(r"^[0-9a-f]{64}$")


class ArchiveCache:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, sha256: str) -> Path:
        if not _SHA_RE.match(sha256):
            raise ValueError(f"not a sha256: {sha256!r}")
        return self.root / sha256[:2] / f"{sha256}.apx"

    def get(self, sha256: str) -> bytes | None:
        """The archive's bytes, or None when absent or no longer matching its hash."""
        path = self.path(sha256)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        if hashlib.sha256(data).hexdigest() != sha256:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            return None
        return data

    def put(self, data: bytes) -> str:
        """Store atomically (temp file, fsync, rename); storing the same bytes again is free."""
        sha = hashlib.sha256(data).hexdigest()
        if self.get(sha) is None:
            with atomic_writer(self.path(sha)) as fh:
                fh.write(data)
        return sha
