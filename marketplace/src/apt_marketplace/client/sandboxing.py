"""Validation of plugins before they are installed: their wheels unpacked into a scratch site
directory, and each plugin imported, discovered and self-tested in apt-sandbox."""

from __future__ import annotations

import contextlib
import os
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apt_sandbox import Limits, validate_plugin
from apt_sandbox.limits import PLUGIN_VALIDATION

from ..apx.errors import ApxError
from ..apx.reader import WheelEntry

__all__ = ["SandboxVerdict", "last_line", "unpack_wheel", "validate_in_sandbox"]

_MAX_WHEEL_UNPACKED = 512 << 20


def unpack_wheel(wheel: WheelEntry, dest: Path) -> None:
    """Lay a wheel out as pip would put it in site-packages, for the sandbox to import from.

    The archive reader already refused links, absolute paths and `..`; this checks again
    because it writes to disk, caps the bytes written, and maps `*.data/purelib|platlib`.
    """
    dest = Path(dest).resolve()
    total = 0
    with wheel.open() as fh, zipfile.ZipFile(fh) as zf:
        for info in zf.infolist():
            name = info.filename
            if name.endswith("/"):
                continue
            parts = name.split("/")
            if name.startswith("/") or "\\" in name or ".." in parts or any(p in ("", ".") for p in parts):
                raise ApxError(f"wheel {wheel.filename} entry {name!r} points outside the install root")
            if parts[0].endswith(".data"):
                if len(parts) < 3 or parts[1] not in ("purelib", "platlib"):
                    continue
                parts = parts[2:]
            target = dest.joinpath(*parts)
            if dest not in target.parents:
                raise ApxError(f"wheel {wheel.filename} entry {name!r} points outside the install root")
            total += info.file_size
            if total > _MAX_WHEEL_UNPACKED:
                raise ApxError(f"wheel {wheel.filename} unpacks beyond {_MAX_WHEEL_UNPACKED} bytes")
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as out:
                remaining = info.file_size + 1
                while chunk := src.read(min(1 << 16, remaining)):
                    remaining -= len(chunk)
                    if remaining <= 0:
                        raise ApxError(f"wheel {wheel.filename} entry {name!r} is longer than its header says")
                    out.write(chunk)


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no detail"


@dataclass(frozen=True)
class SandboxVerdict:
    """`summary` is one line for the user; `record` is what the state database keeps of a pass."""

    ok: bool
    summary: str
    record: dict[str, Any]


def validate_in_sandbox(site: Path, name: str, limits: Limits | None = None) -> SandboxVerdict:
    limits = limits or PLUGIN_VALIDATION
    with _working_directory_off_path():
        report = validate_plugin(site, name, limits)
    if report.ok:
        record = {
            "status": report.status,
            "entries": [{"group": e.group, "name": e.name, "detail": e.detail[:500]} for e in report.entries],
            "isolation": report.isolation,
        }
        return SandboxVerdict(True, ", ".join(f"{e.name} ok" for e in report.entries), record)
    bad = [f"{e.name} ({last_line(e.detail)})" for e in report.entries if e.status != "ok"]
    if report.status != "ok":
        bad.append(f"sandbox run ended with status {report.status} ({last_line(report.detail)})")
    elif not bad:
        bad.append(report.detail or "no provider or plugin entry points")
    return SandboxVerdict(False, "; ".join(bad), {})


@contextlib.contextmanager
def _working_directory_off_path() -> Iterator[None]:
    """The sandbox exposes the parent's `sys.path`; `python -m apt` puts the working directory
    there, which is no part of the environment under test and would hand the plugin the user's
    files (and, in a private directory, hide the interpreter from the sandbox's dropped uid)."""
    cwd = os.getcwd()
    saved = list(sys.path)
    sys.path[:] = [p for p in saved if p not in ("", ".", cwd)]
    try:
        yield
    finally:
        sys.path[:] = saved
