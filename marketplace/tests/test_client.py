from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from apt_marketplace.client.config import ClientConfig
from apt_marketplace.client.errors import MarketClientError
from apt_marketplace.client.http import MarketClient


def _client(handler, **kw) -> MarketClient:
    return MarketClient("http://market.invalid", "aptm_x_y", transport=httpx.MockTransport(handler), backoff=0.001, **kw)


def test_retries_connection_errors_then_succeeds() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if len(calls) < 3:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200, json={"total": 0, "results": []})

    assert _client(handler).search("x") == {"total": 0, "results": []}
    assert len(calls) == 3


def test_reads_retry_on_503_but_writes_do_not_retry_after_sending() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.method)
        if request.method == "GET":
            return httpx.Response(503, json={"error": "unavailable", "detail": "starting"})
        raise httpx.ReadTimeout("slow", request=request)

    with pytest.raises(MarketClientError) as info:
        _client(handler, retries=2).package("x")
    assert info.value.status == 503 and seen == ["GET"] * 3
    seen.clear()
    with pytest.raises(MarketClientError, match="failed"):
        _client(handler).yank("x", "1.0.0", "r")
    assert seen == ["POST"]


def test_error_body_is_surfaced() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(409, json={"error": "version_exists", "detail": "x 1.0.0 exists"})

    with pytest.raises(MarketClientError) as info:
        _client(handler).unyank("x", "1.0.0")
    assert (info.value.status, info.value.code, info.value.detail) == (409, "version_exists", "x 1.0.0 exists")


def test_fetch_verifies_sha256() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/download"):
            return httpx.Response(200, content=b"tampered")
        return httpx.Response(200, json={"name": "x", "version": "1.0.0", "sha256": "0" * 64, "download_url": "/api/v1/packages/x/1.0.0/download"})

    client = _client(handler)
    with pytest.raises(MarketClientError, match="sha256"):
        client.fetch(client.release("x", "1.0.0"))


def test_config_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APT_HOME", str(tmp_path))
    monkeypatch.delenv("APT_MARKET_URL", raising=False)
    monkeypatch.delenv("APT_MARKET_TOKEN", raising=False)
    (tmp_path / "market.toml").write_text('url = "http://file:1"\ntoken = "file-token"\n')
    assert ClientConfig.load() == ClientConfig("http://file:1", "file-token")
    monkeypatch.setenv("APT_MARKET_URL", "http://env:2/")
    assert ClientConfig.load().url == "http://env:2"
    assert ClientConfig.load("http://flag:3", "flag-token") == ClientConfig("http://flag:3", "flag-token")
    (tmp_path / "market.toml").write_text("url = [")
    with pytest.raises(MarketClientError, match="not valid TOML"):
        ClientConfig.load()
