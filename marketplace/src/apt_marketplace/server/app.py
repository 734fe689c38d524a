"""Application factory: puts the catalog, key store and settings on `app.state`, where the
routers' dependencies find them, and makes sure that every error, including FastAPI's own
validation and routing errors, leaves as `{"error": code, "detail": text}`."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import __version__
from ..database import Database
from . import api, simple_index
from .blobs import BlobStore
from .catalog import Catalog
from .errors import MarketError
from .keys import KeyStore
from .models import Base
from .settings import Settings

__all__ = ["app_from_env", "create_app"]

log = logging.getLogger("apt_marketplace")


def _error(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


def _validation_detail(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "request"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "the request is not valid"


class _CatchAll:
    """Turns an unexpected exception into the JSON 500. Starlette's own catch-all handler
    re-raises after responding, which makes uvicorn drop the keep-alive connection."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if started:
                raise
            response = _error(500, "internal", "the server failed to handle this request; it has been logged")
            await response(scope, receive, send)


def create_app(settings: Settings) -> FastAPI:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(settings.db_url)
    db.create_all(Base.metadata)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        db.dispose()

    app = FastAPI(
        title="APT marketplace",
        version=__version__,
        description="Publish, find and resolve APT plugins (.apx archives); a PEP 503/691 index at /simple/.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.catalog = Catalog(settings, db, BlobStore(settings.blob_dir))
    app.state.keys = KeyStore(db)

    @app.exception_handler(MarketError)
    async def _market_error(_request: Request, exc: MarketError) -> JSONResponse:
        return _error(exc.status, exc.code, exc.detail, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, "invalid_request", _validation_detail(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        try:
            code = HTTPStatus(exc.status_code).phrase.lower().replace(" ", "_").replace("-", "_")
        except ValueError:
            code = "http_error"
        return _error(exc.status_code, code, str(exc.detail), getattr(exc, "headers", None))

    app.add_middleware(_CatchAll)
    app.include_router(api.router)
    app.include_router(simple_index.router)
    return app


def app_from_env() -> FastAPI:
    """For `uvicorn --factory apt_marketplace.server.app:app_from_env`."""
    return create_app(Settings.from_env())
