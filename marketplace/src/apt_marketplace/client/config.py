"""Where the client keeps its files and which marketplace it talks to, with which key."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import tomllib

from apt.home import apt_home

from .errors import MarketClientError

__all__ = ["DEFAULT_URL", "ClientConfig"]

DEFAULT_URL = "http://127.0.0.1:8765"


@dataclass(frozen=True)
class ClientConfig:
    url: str
    token: str | None

    @classmethod
    def load(cls, url: str | None = None, token: str | None = None) -> ClientConfig:
        """Flags beat environment, environment beats `$APT_HOME/market.toml`."""
        path = apt_home() / "market.toml"
        file_cfg: dict[str, Any] = {}
        if path.is_file():
            try:
                file_cfg = tomllib.loads(path.read_text(encoding="utf-8"))
            except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
                raise MarketClientError(0, "bad_config", f"{path} is not valid TOML ({exc}); fix or delete it") from None
        resolved_url = url or os.environ.get("APT_MARKET_URL") or file_cfg.get("url") or DEFAULT_URL
        resolved_token = token or os.environ.get("APT_MARKET_TOKEN") or file_cfg.get("token") or None
        if not isinstance(resolved_url, str) or not resolved_url.startswith(("http://", "https://")):
            raise MarketClientError(0, "bad_config", f"market URL {resolved_url!r} must start with http:// or https://")
        return cls(url=resolved_url.rstrip("/"), token=resolved_token)
