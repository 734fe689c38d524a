"""Application factory: puts the catalog, key store and settings on `app.state`, where the
routers' dependencies find them, and makes sure that every error, including FastAPI's own
validation and routing errors, leaves as `{"error": code, "detail": text}`."""

from __future__ import annotations

import logging
import re
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
from .checker import Checker
from .errors import MarketError
from .gc import sweep_spool
from .keys import KeyStore
from .models import Base
from .schemas import NAME_PATTERN, NO_NUL, SEMVER_PATTERN
from .settings import Settings
from .upgrade import add_missing_columns

__all__ = ["app_from_env", "create_app"]

log = logging.getLogger("apt_marketplace")


def _error(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


#: Patterns of the schema, said the way a person fixes their input.
_PATTERN_MEANS = {
    NO_NUL: "must not contain NUL bytes",
    NAME_PATTERN: "must be a project name: ASCII letters, digits, '.', '_' and '-'",
    SEMVER_PATTERN: "must be a semver version such as 2.1.0",
    r"^[ -~]*$": "must be printable ASCII, e.g. ^1.2",
    r"^[0-9A-Za-z.+-]+$": "must be a version such as 1.2.0",
    r"^[a-z][a-z0-9_]*$": "must be a lower-case kind such as router",
}


def _validation_detail(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "request"
        pattern = (err.get("ctx") or {}).get("pattern")
        msg = _PATTERN_MEANS.get(pattern, err.get("msg", "invalid")) if pattern else err.get("msg", "invalid")
        parts.append(f"{where}: {msg}")
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
        except RecursionError:
            if started:
                raise
            response = _error(400, "too_deep", "the request body nests too deeply; send a flatter JSON document")
            await response(scope, receive, send)
        except Exception:
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if started:
                raise
            response = _error(500, "internal", "the server failed to handle this request; it has been logged")
            await response(scope, receive, send)


def _allowed_methods(app: FastAPI, path: str) -> list[str]:
    """The methods of the most specific documented path that matches: Starlette's own 405
    names only the first route it tried, which contradicts the OpenAPI schema."""
    best: tuple[int, set[str]] = (-1, set())
    for template, operations in app.openapi()["paths"].items():
        if re.fullmatch(re.sub(r"\{[^}]+\}", "[^/]+", template), path):
            literal = sum(1 for part in template.split("/") if part and not part.startswith("{"))
            if literal > best[0]:
                best = (literal, {m.upper() for m in operations})
            elif literal == best[0]:
                best[1].update(m.upper() for m in operations)
    return sorted(best[1])


def create_app(settings: Settings) -> FastAPI:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(settings.db_url)
    db.create_all(Base.metadata)
    add_missing_columns(db.engine, Base.metadata)
    blobs = BlobStore(settings.blob_dir)
    catalog = Catalog(settings, db, blobs)
    checker = Checker(settings, db, blobs) if settings.checks != "off" else None
    if checker is not None:
        catalog.on_quarantined = checker.submit

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        removed, size = sweep_spool(blobs, settings.spool_stale_seconds)
        if removed:
            log.info("removed %d stale upload spool file(s), %d bytes", removed, size)
        if checker is not None:
            checker.start()
        yield
        if checker is not None:
            checker.stop()
        db.dispose()

    app = FastAPI(
        title="APT marketplace",
        version=__version__,
        description="Publish, find and resolve APT plugins (.apx archives); a PEP 503/691 index at /simple/.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.catalog = catalog
    app.state.checker = checker
    app.state.keys = KeyStore(db)

    @app.exception_handler(MarketError)
    async def _market_error(_request: Request, exc: MarketError) -> JSONResponse:
        return _error(exc.status, exc.code, exc.detail, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, "invalid_request", _validation_detail(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and exc.detail == "There was an error parsing the body":
            return _error(422, "invalid_request", "the request body is not valid UTF-8 JSON; send a JSON object")
        if exc.status_code == 405:
            allowed = _allowed_methods(app, request.url.path) or [
                m.strip() for m in (getattr(exc, "headers", None) or {}).get("Allow", "").split(",") if m.strip()
            ]
            return _error(
                405, "method_not_allowed", f"{request.url.path} answers {', '.join(allowed)}", {"Allow": ", ".join(allowed)}
            )
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
