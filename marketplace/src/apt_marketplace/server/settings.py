"""Server configuration; everything has a default so `create_app(Settings(data_dir=...))` runs."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..apx.extract import Limits

__all__ = ["Settings"]


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    database_url: str | None = None
    max_upload_bytes: int = 64 << 20
    archive_limits: Limits = field(default_factory=Limits)
    #: PEP 658 metadata is announced only for wheels at least this large. For a plugin wheel of
    #: a few KiB, fetching METADATA first costs pip one more round trip per package than
    #: downloading the wheel it will install anyway (measured: 24 requests instead of 16 for 8
    #: plugins, ~6% slower than pypiserver); for big wheels it saves real bytes.
    metadata_min_wheel_bytes: int = 256 << 10
    #: What a release must pass before it is published: "sandbox" runs every check including
    #: importing and self-testing each provider in apt-sandbox; "static" all but the sandbox;
    #: "off" publishes at once (tests of other features, and a trusted private index).
    checks: Literal["sandbox", "static", "off"] = "sandbox"
    #: Background check workers; each sandbox run is one process of up to 8 GiB address space.
    check_workers: int = 2
    #: How often the checker looks for quarantined releases it was not handed (after a restart
    #: or an approval in `apt market review`).
    check_poll_seconds: float = 2.0
    #: A release waits this long for plugin dependencies that are themselves quarantined
    #: (uploaded together); after that, two releases that need each other fail.
    dependency_wait_seconds: float = 3600.0
    #: A spool file untouched this long belongs to an upload that died; swept at start-up.
    spool_stale_seconds: float = 600.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_dir", Path(self.data_dir).expanduser().resolve())

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'market.db'}"

    @property
    def blob_dir(self) -> Path:
        return self.data_dir / "blobs"

    @property
    def wheel_dir(self) -> Path:
        """Plain wheels served by the index beside the plugins (the first-party apt-core)."""
        return self.data_dir / "wheels"

    @classmethod
    def from_env(cls, data_dir: str | Path | None = None) -> Settings:
        """Lets `uvicorn --factory apt_marketplace.server.app:app_from_env` run without a wrapper script."""
        home = Path(os.environ.get("APT_HOME") or "~/.apt").expanduser()  # apt.home's rule; the server does not import apt
        root = data_dir or os.environ.get("APT_MARKET_DATA_DIR") or home / "market-server"
        max_upload = os.environ.get("APT_MARKET_MAX_UPLOAD_BYTES")
        checks = os.environ.get("APT_MARKET_CHECKS", "sandbox")
        if checks not in ("sandbox", "static", "off"):
            raise ValueError(f"APT_MARKET_CHECKS={checks!r}; use sandbox, static or off")
        return cls(
            checks=checks,  # type: ignore[arg-type]
            data_dir=Path(root),
            database_url=os.environ.get("APT_MARKET_DATABASE_URL") or None,
            max_upload_bytes=int(max_upload) if max_upload else 64 << 20,
        )
