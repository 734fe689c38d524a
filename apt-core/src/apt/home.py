"""APT's data directory (``APT_HOME``, default ``~/.apt``): caches, client state, error store."""

from __future__ import annotations

import os
from pathlib import Path


def apt_home() -> Path:
    home = Path(os.environ.get("APT_HOME") or Path.home() / ".apt")
    home.mkdir(parents=True, exist_ok=True)
    return home
