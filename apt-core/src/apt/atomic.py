"""Crash-safe writes: a reader sees the old file or the whole new one, never a torn one.

Kept free of torch so that tools which only write indexes or metadata stay light.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from apt.errors import RunError

_NO_SPACE = {errno.ENOSPC, errno.EDQUOT}


class DiskFullError(RunError, OSError):
    """The device ran out of space mid-write; the previous file (if any) is untouched.

    Also an :class:`OSError`, so callers that already handled write failures keep doing so.
    """

    def __init__(self, path: Path, free: int | None, advice: str = "free some space and retry") -> None:
        self.path = path
        self.free = free
        shown = "unknown space" if free is None else human_bytes(free)
        super().__init__(f"disk full while writing {path}: {shown} free in {path.parent}; {advice}")
        self.errno = errno.ENOSPC

    def advise(self, advice: str) -> DiskFullError:
        """The same failure with the fix that fits the caller (which setting to change, what to run next)."""
        return DiskFullError(self.path, self.free, advice)


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write(file)`` on a temp file beside ``path``, then make it ``path`` durably.

    The temp file is fsynced, renamed over ``path`` and the directory fsynced, so a kill at any
    instant leaves either the previous file or the new one. Running out of space raises
    :class:`DiskFullError` (after the partial temp file is gone, so the free space it reports is real).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        try:
            with open(tmp, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        fsync_dir(path.parent)
    except (OSError, RuntimeError) as err:
        if isinstance(err, DiskFullError) or not out_of_space(err):
            raise
        raise DiskFullError(path, free_bytes(path.parent)) from err


def out_of_space(err: BaseException) -> bool:
    """Whether ``err`` or what it wraps is ENOSPC/EDQUOT (torch.save turns it into a bare RuntimeError)."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _NO_SPACE:
            return True
        current = current.__cause__ or current.__context__
    return False


def free_bytes(folder: Path) -> int | None:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def human_bytes(count: int) -> str:
    if count < 1024:
        return f"{count} B"
    size = count / 1024
    for unit in ("KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def fsync_dir(folder: Path) -> None:
    """Persist a rename: without syncing the directory the new name can vanish on power loss."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
