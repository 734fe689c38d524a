"""Helpers for testing plugins: real distributions on disk, without pip.

:func:`make_distribution` writes an installed-layout distribution (modules plus a
``.dist-info`` with ``entry_points.txt``) into a directory; put that directory on
``sys.path`` or ``PYTHONPATH`` and ``importlib.metadata`` discovers it like a pip install.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path


def make_distribution(root: Path, name: str, version: str = "1.0.0", *,
                      entry_points: Mapping[str, Mapping[str, str]] | None = None,
                      modules: Mapping[str, str] | None = None) -> Path:
    """Write distribution ``name`` under ``root``; ``modules`` maps relative file paths to source."""
    root.mkdir(parents=True, exist_ok=True)
    for rel, source in (modules or {}).items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source, encoding="utf-8")
    info = root / f"{re.sub(r'[-_.]+', '_', name)}-{version}.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n", encoding="utf-8")
    lines = []
    for group, entries in (entry_points or {}).items():
        lines.append(f"[{group}]")
        lines += [f"{key} = {value}" for key, value in entries.items()]
        lines.append("")
    (info / "entry_points.txt").write_text("\n".join(lines), encoding="utf-8")
    return root
