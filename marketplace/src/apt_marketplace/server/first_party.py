"""`apt market serve --with-first-party`: the core and the first-party plugins, built from the
sources this environment was installed from, served by the marketplace itself, so
`pip install --index-url http://HOST/simple/ --extra-index-url <normal index> apt-plugin-moe`
finds `apt-core` here and only third-party dependencies (torch, ...) on the normal index.

apt-core becomes a plain wheel on the shelf; each plugin is packed and published through the
catalog like any upload (owner `first-party`, the same checks), so a restart republishes
identical archives as no-ops.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote, urlparse

from packaging.utils import canonicalize_name

from ..apx.errors import ApxError
from ..apx.pack import pack
from ..fsutil import fsync_dir
from .catalog import Catalog
from .errors import MarketError
from .keys import KeyInfo

__all__ = ["FIRST_PARTY_OWNER", "first_party_sources", "serve_first_party"]

FIRST_PARTY_OWNER = "first-party"
CORE = "apt-core"


def first_party_sources() -> dict[str, Path]:
    """apt-core and every apt-plugin-* installed here from a local directory, by name."""
    found: dict[str, Path] = {}
    for dist in importlib.metadata.distributions():
        name = canonicalize_name(dist.metadata["Name"] or "")
        if name != CORE and not name.startswith("apt-plugin-"):
            continue
        try:
            url = json.loads(dist.read_text("direct_url.json") or "{}").get("url", "")
        except ValueError:
            continue
        parsed = urlparse(url)
        if parsed.scheme != "file":
            continue
        source = Path(unquote(parsed.path))
        if (source / "pyproject.toml").is_file():
            found[name] = source
    return dict(sorted(found.items()))


def _build_core(source: Path, wheel_dir: Path) -> Path:
    wheel_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="core-", dir=wheel_dir.parent) as tmp:
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--disable-pip-version-check",
             "-q", "-w", tmp, str(source)],
            capture_output=True, text=True, stdin=subprocess.DEVNULL,
        )
        built = sorted(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or len(built) != 1:
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"building the {CORE} wheel from {source} failed: {tail}")
        target = wheel_dir / built[0].name
        os.replace(built[0], target)
        fsync_dir(wheel_dir)
        return target


def serve_first_party(catalog: Catalog, say: Callable[[str], None]) -> None:
    """Put apt-core on the shelf and publish each first-party plugin; a refusal is reported
    and skipped (for instance a plugin name already owned by someone else)."""
    sources = first_party_sources()
    if CORE not in sources:
        raise RuntimeError(f"{CORE} is not installed from a local source here, so there is nothing to build it from")
    say(f"first-party: {_build_core(sources.pop(CORE), catalog.settings.wheel_dir).name}")
    key = KeyInfo(0, FIRST_PARTY_OWNER, "", frozenset(sources), owner=FIRST_PARTY_OWNER, address="local")
    with tempfile.TemporaryDirectory(prefix="first-party-") as tmp:
        for name, source in sources.items():
            try:
                archive = pack(source, Path(tmp), build_isolation=False)
                body, _ = catalog.publish_file(archive, key)
                say(f"first-party: {name} {body['version']} {body['status']}")
            except (ApxError, MarketError, OSError, subprocess.SubprocessError) as exc:
                say(f"first-party: {name} skipped: {getattr(exc, 'detail', exc)}")
