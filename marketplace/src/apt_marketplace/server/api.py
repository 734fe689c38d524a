"""The JSON API under /api/v1. Handlers stay thin: the catalog does the work, and handlers that
touch the database are plain functions, which FastAPI runs in its thread pool so a slow commit
never stalls the event loop."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import FileResponse, JSONResponse

from .dependencies import CatalogDep, OptionalKey, PublisherKey
from .schemas import (
    NO_NUL,
    DeleteOut,
    ErrorOut,
    PackageOut,
    PublishOut,
    RatingIn,
    RatingsOut,
    ReleaseDetailOut,
    ReleaseOut,
    ResolveIn,
    ResolveOut,
    SearchOut,
    YankIn,
)

__all__ = ["router"]

NAME = Annotated[str, Path(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
VERSION = Annotated[str, Path(min_length=1, max_length=256, pattern=r"^[0-9A-Za-z.+-]+$")]



def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorOut} for code in codes}


router = APIRouter(prefix="/api/v1", tags=["api"])


@router.get("/health")
def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/search", response_model=SearchOut, responses=_errors(422))
def search(
    catalog: CatalogDep,
    q: Annotated[str, Query(max_length=200, pattern=NO_NUL)] = "",
    kind: Annotated[str | None, Query(max_length=64, pattern=r"^[a-z][a-z0-9_]*$")] = None,
    sort: Literal["relevance", "downloads", "rating", "name"] = "relevance",
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0, le=100_000)] = 0,
) -> dict[str, Any]:
    return catalog.search(q, kind, sort, limit, offset)


@router.get("/packages/{name}", response_model=PackageOut, responses=_errors(401, 404, 422))
def package(name: NAME, catalog: CatalogDep, key: OptionalKey) -> dict[str, Any]:
    """With the owner's key, also the releases that are quarantined, failed their checks or
    are held for review, each with its status and reason."""
    return catalog.package_info(name, key)


@router.get("/packages/{name}/ratings", response_model=RatingsOut, responses=_errors(404, 422))
def ratings(name: NAME, catalog: CatalogDep) -> dict[str, Any]:
    return catalog.ratings(name)


@router.put("/packages/{name}/ratings", response_model=RatingsOut, responses=_errors(401, 404, 422))
def rate(name: NAME, body: RatingIn, catalog: CatalogDep, key: PublisherKey) -> dict[str, Any]:
    """One rating per API key and package; rating again replaces the earlier score."""
    return catalog.rate(name, key, body.score)


@router.get("/packages/{name}/{version}", response_model=ReleaseDetailOut, responses=_errors(401, 404, 422))
def release(name: NAME, version: VERSION, catalog: CatalogDep, key: OptionalKey) -> dict[str, Any]:
    return catalog.release_info(name, version, key)


@router.get(
    "/packages/{name}/{version}/download",
    response_class=FileResponse,
    responses={200: {"content": {"application/zip": {}}}, **_errors(404, 422)},
)
def download(name: NAME, version: VERSION, catalog: CatalogDep) -> FileResponse:
    path, filename, sha = catalog.download(name, version)
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
    responses={
        200: {"model": PublishOut, "description": "identical archive already uploaded"},
        202: {"model": PublishOut, "description": "accepted: quarantined until the publish checks pass, or held for name review"},
        **_errors(400, 401, 403, 409, 411, 413),
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        }
    },
)
async def publish(request: Request, catalog: CatalogDep, key: PublisherKey) -> JSONResponse:
    """Upload a .apx archive as the raw request body with 'Authorization: Bearer <key>'."""
    body, created = await catalog.publish(request.stream(), key, request.headers.get("content-length"))
    status = 200 if not created else 201 if body["status"] == "published" else 202
    return JSONResponse({**body, "created": created}, status_code=status)


@router.post("/packages/{name}/{version}/yank", response_model=ReleaseOut, responses=_errors(401, 403, 404, 422))
def yank(name: NAME, version: VERSION, body: YankIn, catalog: CatalogDep, key: PublisherKey) -> dict[str, Any]:
    return catalog.set_yanked(name, version, key, True, body.reason)


@router.post("/packages/{name}/{version}/unyank", response_model=ReleaseOut, responses=_errors(401, 403, 404, 422))
def unyank(name: NAME, version: VERSION, catalog: CatalogDep, key: PublisherKey) -> dict[str, Any]:
    return catalog.set_yanked(name, version, key, False, None)


@router.delete("/packages/{name}/{version}", response_model=DeleteOut, responses=_errors(401, 403, 404, 422))
def delete(name: NAME, version: VERSION, catalog: CatalogDep, key: PublisherKey) -> dict[str, Any]:
    """Remove a release for good; its version can never be published again (yank instead when unsure)."""
    return catalog.delete_release(name, version, key)


@router.post("/resolve", response_model=ResolveOut, responses=_errors(400, 409, 422))
def resolve(body: ResolveIn, catalog: CatalogDep) -> dict[str, Any]:
    """Pin one release per plugin, or 409 with an explanation of the clashing constraints."""
    return catalog.resolve(dict(body.requirements), body.core)
