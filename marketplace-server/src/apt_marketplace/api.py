"""The JSON API under /api/v1. Handlers stay thin: the registry does the work, and database
work runs in the thread pool so a slow commit never stalls the event loop."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from .errors import MarketError
from .registry import KeyInfo, Registry

__all__ = ["ErrorOut", "build_api_router"]

NAME = Annotated[str, Path(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
VERSION = Annotated[str, Path(min_length=1, max_length=256)]


class ErrorOut(BaseModel):
    error: str = Field(description="machine-readable code, e.g. not_found, version_exists")
    detail: str = Field(description="what went wrong and how to fix it")


class ReleaseOut(BaseModel):
    name: str
    version: str
    summary: str
    yanked: bool
    yank_reason: str | None
    sha256: str
    size: int
    uploaded_at: str
    uploader: str
    requires: dict[str, str]
    provides: list[str]
    core: str
    python: str
    sandbox: str
    signed: bool
    downloads: int
    download_url: str


class WheelOut(BaseModel):
    filename: str
    sha256: str
    size: int
    url: str


class ReleaseDetailOut(ReleaseOut):
    manifest: dict[str, Any]
    files: list[WheelOut]


class PackageOut(BaseModel):
    name: str
    display_name: str
    summary: str
    downloads: int
    rating: float | None
    rating_count: int
    signed_by_publisher_key: bool
    latest: str | None
    releases: list[ReleaseOut]


class SearchHit(BaseModel):
    name: str
    version: str
    summary: str
    provides: list[str]
    downloads: int
    rating: float | None
    rating_count: int
    score: float


class SearchOut(BaseModel):
    total: int
    results: list[SearchHit]


class PublishOut(ReleaseOut):
    created: bool


class YankIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field(default="", max_length=1000)


class DeleteOut(BaseModel):
    name: str
    version: str
    deleted: bool


class RatingIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    score: int = Field(ge=1, le=5)


class RatingsOut(BaseModel):
    name: str
    average: float | None
    count: int
    histogram: dict[str, int]


class ResolveIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    requirements: dict[Annotated[str, Field(max_length=100)], Annotated[str, Field(max_length=256)]] = Field(
        max_length=64, description="plugin name -> semver range, e.g. {\"apt-plugin-moe\": \"^1.2\"}"
    )
    core: str | None = Field(default=None, max_length=256, description="the apt-core version that will run them")


class ResolveOut(BaseModel):
    packages: list[ReleaseOut]
    pins: dict[str, str]


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorOut} for code in codes}


def build_api_router(registry: Registry, max_upload_bytes: int) -> APIRouter:
    router = APIRouter(prefix="/api/v1", tags=["api"])

    async def authenticate(authorization: str | None) -> KeyInfo:
        return await run_in_threadpool(registry.authenticate, authorization)

    @router.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/search", response_model=SearchOut, responses=_errors(422))
    def search(
        q: Annotated[str, Query(max_length=200)] = "",
        kind: Annotated[str | None, Query(max_length=64, pattern=r"^[a-z][a-z0-9_]*$")] = None,
        sort: Literal["relevance", "downloads", "rating", "name"] = "relevance",
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
        offset: Annotated[int, Query(ge=0, le=100_000)] = 0,
    ) -> dict[str, Any]:
        return registry.search(q, kind, sort, limit, offset)

    @router.get("/packages/{name}", response_model=PackageOut, responses=_errors(404, 422))
    def package(name: NAME) -> dict[str, Any]:
        return registry.package_info(name)

    @router.get("/packages/{name}/ratings", response_model=RatingsOut, responses=_errors(404, 422))
    def ratings(name: NAME) -> dict[str, Any]:
        return registry.ratings(name)

    @router.put("/packages/{name}/ratings", response_model=RatingsOut, responses=_errors(401, 404, 422))
    async def rate(name: NAME, body: RatingIn, authorization: Annotated[str | None, Header()] = None) -> Any:
        """One rating per API key and package; rating again replaces the earlier score."""
        key = await authenticate(authorization)
        return await run_in_threadpool(registry.rate, name, key, body.score)

    @router.get("/packages/{name}/{version}", response_model=ReleaseDetailOut, responses=_errors(404, 422))
    def release(name: NAME, version: VERSION) -> dict[str, Any]:
        return registry.release_info(name, version)

    @router.get(
        "/packages/{name}/{version}/download",
        response_class=FileResponse,
        responses={200: {"content": {"application/zip": {}}}, **_errors(404, 422)},
    )
    def download(name: NAME, version: VERSION) -> FileResponse:
        sha, filename, release_id, package_id = registry.release_blob(name, version)
        path = registry.blobs.path(sha)
        if not path.is_file():
            raise MarketError(410, "blob_missing", f"the archive of {name} {version} is missing from storage")
        registry.record_download(release_id, package_id)
        return FileResponse(
            path,
            media_type="application/zip",
            filename=filename,
            headers={"X-Apx-Sha256": sha, "Cache-Control": "public, max-age=31536000, immutable"},
        )

    @router.post(
        "/publish",
        response_model=PublishOut,
        status_code=201,
        responses={200: {"model": PublishOut, "description": "identical archive already published"}, **_errors(400, 401, 403, 409, 411, 413)},
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
            }
        },
    )
    async def publish(request: Request, authorization: Annotated[str | None, Header()] = None) -> Any:
        """Upload a .apx archive as the raw request body with 'Authorization: Bearer <key>'."""
        key = await authenticate(authorization)
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise MarketError(400, "bad_request", "Content-Length must be a number")
            if int(declared) > max_upload_bytes:
                raise MarketError(413, "too_large", f"archives are limited to {max_upload_bytes} bytes")
        spool = await run_in_threadpool(registry.blobs.spool)
        try:
            async for chunk in request.stream():
                if spool.size + len(chunk) > max_upload_bytes:
                    raise MarketError(413, "too_large", f"archives are limited to {max_upload_bytes} bytes")
                spool.write(chunk)
            if spool.size == 0:
                raise MarketError(400, "invalid_archive", "the request body is empty; send the .apx bytes")
        except BaseException:
            spool.discard()
            raise
        body, created = await run_in_threadpool(registry.publish, spool, key)
        return JSONResponse({**body, "created": created}, status_code=201 if created else 200)

    @router.post("/packages/{name}/{version}/yank", response_model=ReleaseOut, responses=_errors(401, 403, 404, 422))
    async def yank(name: NAME, version: VERSION, body: YankIn, authorization: Annotated[str | None, Header()] = None) -> Any:
        key = await authenticate(authorization)
        return await run_in_threadpool(registry.set_yanked, name, version, key, True, body.reason)

    @router.post("/packages/{name}/{version}/unyank", response_model=ReleaseOut, responses=_errors(401, 403, 404, 422))
    async def unyank(name: NAME, version: VERSION, authorization: Annotated[str | None, Header()] = None) -> Any:
        key = await authenticate(authorization)
        return await run_in_threadpool(registry.set_yanked, name, version, key, False, None)

    @router.delete("/packages/{name}/{version}", response_model=DeleteOut, responses=_errors(401, 403, 404, 422))
    async def delete(name: NAME, version: VERSION, authorization: Annotated[str | None, Header()] = None) -> Any:
        """Remove a release for good; its version can never be published again (yank instead when unsure)."""
        key = await authenticate(authorization)
        return await run_in_threadpool(registry.delete_release, name, version, key)

    @router.post("/resolve", response_model=ResolveOut, responses=_errors(400, 409, 422))
    def resolve(body: ResolveIn) -> dict[str, Any]:
        """Pin one release per plugin, or 409 with an explanation of the clashing constraints."""
        return registry.resolve(dict(body.requirements), body.core)

    return router
