"""HTTP client for the marketplace API, used by `apt market ...`.

Connection failures are retried with exponential backoff because a CLI user usually hits a
server that is just starting or briefly restarting; an HTTP error answer is never retried
except 502/503/504 on reads.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from .. import __version__
from ..resolver import ReleaseInfo, Resolution, resolve
from ..semver import InvalidVersion, parse_version
from .errors import MarketClientError

__all__ = ["HttpCatalogue", "MarketClient"]

_RETRY_STATUS = {502, 503, 504}


class MarketClient:
    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        retries: int = 3,
        backoff: float = 0.25,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.retries = retries
        self.backoff = backoff
        self._http = httpx.Client(
            base_url=self.url,
            timeout=timeout,
            transport=transport,
            headers={"User-Agent": f"apt-marketplace/{__version__}"},
        )

    def __enter__(self) -> MarketClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, *, auth: bool = False, **kwargs: Any) -> httpx.Response:
        headers = kwargs.pop("headers", {})
        if auth:
            if not self.token:
                raise MarketClientError(
                    0, "no_token", "this needs an API key: pass --token, set APT_MARKET_TOKEN or put token = \"...\" in $APT_HOME/market.toml"
                )
            headers["Authorization"] = f"Bearer {self.token}"
        idempotent = method in ("GET", "HEAD")
        attempt = 0
        while True:
            try:
                response = self._http.request(method, path, headers=headers, **kwargs)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                failure: Exception | None = exc
            except (httpx.ReadTimeout, httpx.RemoteProtocolError, httpx.ReadError) as exc:
                if not idempotent:
                    raise MarketClientError(0, "connection", f"{method} {self.url}{path} failed: {exc}") from None
                failure = exc
            else:
                if not (idempotent and response.status_code in _RETRY_STATUS):
                    break
                failure = None
            attempt += 1
            if attempt > self.retries:
                if failure is None:
                    break
                raise MarketClientError(
                    0, "connection", f"cannot reach the marketplace at {self.url} ({failure}); check --url or APT_MARKET_URL"
                ) from None
            time.sleep(self.backoff * (2 ** (attempt - 1)))
        if response.status_code >= 400:
            try:
                body = response.json()
                code, detail = str(body["error"]), str(body["detail"])
            except (ValueError, KeyError, TypeError):
                code, detail = "http_error", f"{response.status_code} {response.reason_phrase}"
            raise MarketClientError(response.status_code, code, detail)
        return response

    def search(self, query: str = "", kind: str | None = None, sort: str = "relevance", limit: int = 20) -> dict[str, Any]:
        params: dict[str, Any] = {"q": query, "sort": sort, "limit": limit}
        if kind:
            params["kind"] = kind
        return self._request("GET", "/api/v1/search", params=params).json()

    def package(self, name: str, owner_view: bool = False) -> dict[str, Any]:
        """`owner_view` sends the key, so the owner also sees quarantined, failed and held releases."""
        return self._request("GET", f"/api/v1/packages/{name}", auth=owner_view).json()

    def release(self, name: str, version: str) -> dict[str, Any]:
        return self._request("GET", f"/api/v1/packages/{name}/{version}").json()

    def publish(self, archive: Path) -> tuple[dict[str, Any], bool]:
        data = Path(archive).read_bytes()
        response = self._request(
            "POST", "/api/v1/publish", auth=True, content=data, headers={"Content-Type": "application/octet-stream"}
        )
        body = response.json()
        return body, bool(body.get("created", response.status_code in (201, 202)))

    def yank(self, name: str, version: str, reason: str) -> dict[str, Any]:
        return self._request("POST", f"/api/v1/packages/{name}/{version}/yank", auth=True, json={"reason": reason}).json()

    def unyank(self, name: str, version: str) -> dict[str, Any]:
        return self._request("POST", f"/api/v1/packages/{name}/{version}/unyank", auth=True).json()

    def rate(self, name: str, score: int) -> dict[str, Any]:
        return self._request("PUT", f"/api/v1/packages/{name}/ratings", auth=True, json={"score": score}).json()

    def resolve(self, requirements: Mapping[str, str], core: str | None = None) -> Resolution:
        """Resolve locally with the same resolver the server runs, fetching metadata on demand."""
        return resolve(requirements, HttpCatalogue(self), core)

    def fetch(self, info: dict[str, Any]) -> bytes:
        """The archive of a release record, refused unless its sha256 matches the record."""
        response = self._request("GET", info["download_url"])
        digest = hashlib.sha256(response.content).hexdigest()
        if digest != info["sha256"]:
            raise MarketClientError(
                0, "hash_mismatch", f"{info['name']} {info['version']}: downloaded sha256 {digest} != {info['sha256']}"
            )
        return response.content


class HttpCatalogue:
    """Release metadata fetched from the server, one package at a time, as the resolver asks."""

    def __init__(self, client: MarketClient) -> None:
        self.client = client

    def releases(self, name: str) -> Sequence[ReleaseInfo]:
        try:
            data = self.client.package(name)
        except MarketClientError as exc:
            if exc.status == 404:
                return []
            raise
        out = []
        for r in data["releases"]:
            if r.get("status", "published") != "published":
                continue
            try:
                version = parse_version(r["version"])
            except InvalidVersion:
                continue
            out.append(ReleaseInfo(data["name"], version, r["requires"], r["core"], r["yanked"]))
        return out
