"""A PEP 503/691 simple repository over the wheels inside published archives, so plain
`pip install --index-url .../simple/ NAME` and `uv pip install` work without our client.

Also PEP 592 (yanked), PEP 658/714 (METADATA served beside each wheel, announced under both
attribute names since older pip reads only the first, for wheels of at least
`Settings.metadata_min_wheel_bytes`), and PEP 700 (size, versions).
"""

from __future__ import annotations

import html
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from anyio import to_thread
from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from packaging.utils import canonicalize_name

from .catalog import Catalog
from .dependencies import CatalogDep, SettingsDep
from .errors import MarketError
from .schemas import ErrorOut

__all__ = ["negotiate", "router"]

JSON_V1 = "application/vnd.pypi.simple.v1+json"
HTML_V1 = "application/vnd.pypi.simple.v1+html"
TEXT_HTML = "text/html"
API_VERSION = "1.1"
_ALIASES = {
    JSON_V1: JSON_V1,
    "application/vnd.pypi.simple.latest+json": JSON_V1,
    HTML_V1: HTML_V1,
    "application/vnd.pypi.simple.latest+html": HTML_V1,
    TEXT_HTML: TEXT_HTML,
}
_PREFERENCE = [JSON_V1, HTML_V1, TEXT_HTML]


def negotiate(accept: str | None) -> str:
    """Pick the response type per PEP 691: highest q wins, ties go to JSON, no header means HTML."""
    if not accept or not accept.strip():
        return TEXT_HTML
    best: tuple[float, int, str] | None = None
    for part in accept.split(","):
        fields = [f.strip() for f in part.split(";")]
        media = fields[0].lower()
        q = 1.0
        for param in fields[1:]:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value.strip())
                except ValueError:
                    q = 0.0
        if q <= 0:
            continue
        chosen: str | None
        if media in ("*/*", "text/*", "application/*"):
            chosen = TEXT_HTML if media != "application/*" else JSON_V1
        else:
            chosen = _ALIASES.get(media)
        if chosen is None:
            continue
        rank = (q, -_PREFERENCE.index(chosen), chosen)
        if best is None or rank[:2] > best[:2]:
            best = rank
    if best is None:
        raise MarketError(406, "not_acceptable", f"the simple index serves {JSON_V1}, {HTML_V1} and {TEXT_HTML}")
    return best[2]


def _headers() -> dict[str, str]:
    return {"Vary": "Accept", "Cache-Control": "max-age=60"}


def _render(kind: str, data: dict[str, Any], page_html: str) -> Response:
    if kind == JSON_V1:
        return JSONResponse(data, media_type=JSON_V1, headers=_headers())
    media = HTML_V1 if kind == HTML_V1 else "text/html; charset=utf-8"
    response = Response(page_html, headers=_headers())
    response.headers["content-type"] = media
    return response


def _page(title: str, body: str) -> str:
    t = html.escape(title)
    return (
        "<!DOCTYPE html>\n<html>\n  <head>\n"
        f'    <meta name="pypi:repository-version" content="{API_VERSION}">\n'
        f"    <title>{t}</title>\n  </head>\n  <body>\n    <h1>{t}</h1>\n{body}  </body>\n</html>\n"
    )


def _upload_time(dt: datetime) -> str:
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


_INLINE_BYTES = 1 << 20


def _locate(catalog: Catalog, sha256: str, wheel_name: str, is_meta: bool) -> tuple[Path, bytes | None] | None:
    """The blob behind a file URL, with its bytes when small enough to send from memory."""
    path = catalog.simple_blob(sha256, wheel_name, is_meta)
    if path is None:
        return None
    try:
        size = path.stat().st_size
        return path, (path.read_bytes() if size <= _INLINE_BYTES else None)
    except FileNotFoundError:
        raise MarketError(410, "blob_missing", f"{wheel_name}{'.metadata' if is_meta else ''} is missing from storage") from None


router = APIRouter(tags=["simple"])


@router.get("/simple", include_in_schema=False)
def simple_root_redirect(request: Request) -> Response:
    return RedirectResponse(request.scope.get("root_path", "") + "/simple/", status_code=301)


_PAGE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "the page in the negotiated type",
        "content": {TEXT_HTML: {"schema": {"type": "string"}}, HTML_V1: {"schema": {"type": "string"}}, JSON_V1: {"schema": {"type": "object"}}},
    },
    406: {"model": ErrorOut, "description": "no acceptable type in Accept"},
}


@router.get("/simple/", summary="Project list (PEP 503 HTML or PEP 691 JSON by Accept)", responses=_PAGE)
async def project_list(request: Request, catalog: CatalogDep) -> Response:
    kind = negotiate(request.headers.get("accept"))
    names = await to_thread.run_sync(catalog.simple_projects)
    root = request.scope.get("root_path", "")
    links = "".join(f'    <a href="{html.escape(f"{root}/simple/{n}/")}">{html.escape(n)}</a><br/>\n' for n in names)
    data = {"meta": {"api-version": API_VERSION}, "projects": [{"name": n} for n in names]}
    return _render(kind, data, _page("Simple index", links))


@router.get("/simple/{project}", include_in_schema=False)
def project_redirect(request: Request, project: str) -> Response:
    root = request.scope.get("root_path", "")
    return RedirectResponse(f"{root}/simple/{canonicalize_name(project)}/", status_code=301)


@router.get(
    "/simple/{project}/",
    summary="Files of one project (PEP 503 HTML or PEP 691 JSON by Accept)",
    responses={**_PAGE, 301: {"description": "to the normalised name"}, 404: {"model": ErrorOut, "description": "no such project"}},
)
async def project_page(request: Request, project: str, catalog: CatalogDep, settings: SettingsDep) -> Response:
    canonical = canonicalize_name(project)
    root = request.scope.get("root_path", "")
    if project != canonical:
        return RedirectResponse(f"{root}/simple/{canonical}/", status_code=301, headers=_headers())
    kind = negotiate(request.headers.get("accept"))
    found = await to_thread.run_sync(catalog.simple_files, canonical)
    if found is None:
        raise MarketError(404, "not_found", f"no project named {canonical!r} on this index")
    name, files, versions = found
    entries, links = [], []
    for f in files:
        url = f"{root}/files/{f['sha256']}/{f['filename']}"
        yanked: bool | str = (f["yank_reason"] or True) if f["yanked"] else False
        announce = f["size"] >= settings.metadata_min_wheel_bytes
        entry: dict[str, Any] = {
            "filename": f["filename"],
            "url": url,
            "hashes": {"sha256": f["sha256"]},
            "requires-python": f["requires_python"],
        }
        if announce:
            entry["core-metadata"] = {"sha256": f["metadata_sha256"]}
            entry["dist-info-metadata"] = {"sha256": f["metadata_sha256"]}
        entry.update({"yanked": yanked, "size": f["size"], "upload-time": _upload_time(f["upload_time"])})
        entries.append(entry)
        attrs = [f'href="{html.escape(url + "#sha256=" + f["sha256"])}"']
        if f["requires_python"]:
            attrs.append(f'data-requires-python="{html.escape(f["requires_python"])}"')
        if announce:
            meta = f"sha256={f['metadata_sha256']}"
            attrs.append(f'data-dist-info-metadata="{meta}"')
            attrs.append(f'data-core-metadata="{meta}"')
        if f["yanked"]:
            attrs.append(f'data-yanked="{html.escape(f["yank_reason"] or "")}"')
        links.append(f"    <a {' '.join(attrs)}>{html.escape(f['filename'])}</a><br/>\n")
    data = {"meta": {"api-version": API_VERSION}, "name": name, "versions": versions, "files": entries}
    return _render(kind, data, _page(f"Links for {name}", "".join(links)))


@router.get(
    "/files/{sha256}/{filename}",
    summary="A wheel, or its METADATA when the name ends in .metadata",
    responses={
        200: {"content": {"application/octet-stream": {}, "text/plain": {}}},
        404: {"model": ErrorOut, "description": "no such published file"},
        410: {"model": ErrorOut, "description": "the blob is missing from storage"},
    },
)
async def wheel_file(sha256: str, filename: str, catalog: CatalogDep) -> Response:
    is_meta = filename.endswith(".whl.metadata")
    wheel_name = filename[: -len(".metadata")] if is_meta else filename
    found = await to_thread.run_sync(_locate, catalog, sha256, wheel_name, is_meta)
    if found is None:
        raise MarketError(404, "not_found", f"no file {filename} with sha256 {sha256}")
    path, body = found
    media_type = "text/plain; charset=utf-8" if is_meta else "application/octet-stream"
    headers = {"Cache-Control": "public, max-age=31536000, immutable"}
    if body is not None:
        # Plugin wheels and METADATA are small: one read in the thread that did the lookup
        # beats FileResponse's per-chunk thread hops, which showed in pip install times.
        if not is_meta:
            headers["Content-Disposition"] = f'attachment; filename="{wheel_name}"'
        return Response(body, media_type=media_type, headers=headers)
    return FileResponse(path, media_type=media_type, filename=None if is_meta else wheel_name, headers=headers)
