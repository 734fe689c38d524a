"""What the module-level routers need, handed over by FastAPI's dependency injection: the
services live on `app.state`, so one router serves every app that `create_app` builds."""

from __future__ import annotations

from typing import Annotated

from anyio import to_thread
from fastapi import Depends, Header, Request

from .catalog import Catalog
from .keys import KeyInfo, KeyStore
from .settings import Settings

__all__ = ["CatalogDep", "OptionalKey", "PublisherKey", "SettingsDep"]


async def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def _catalog(request: Request) -> Catalog:
    catalog: Catalog = request.app.state.catalog
    return catalog


async def _publisher_key(request: Request, authorization: Annotated[str | None, Header()] = None) -> KeyInfo:
    """The API key of the request; the lookup runs in a worker thread like all database work."""
    keys: KeyStore = request.app.state.keys
    address = request.client.host if request.client else None
    return await to_thread.run_sync(keys.authenticate, authorization, address)


async def _optional_key(request: Request, authorization: Annotated[str | None, Header()] = None) -> KeyInfo | None:
    """The key when one is sent: the owner sees releases the public does not."""
    if not authorization:
        return None
    return await _publisher_key(request, authorization)


SettingsDep = Annotated[Settings, Depends(_settings)]
CatalogDep = Annotated[Catalog, Depends(_catalog)]
PublisherKey = Annotated[KeyInfo, Depends(_publisher_key)]
OptionalKey = Annotated[KeyInfo | None, Depends(_optional_key)]
