"""The JSON shapes of the API, which are also its OpenAPI schema."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

#: Text that reaches the database: PostgreSQL refuses NUL in text, so it is refused here first.
NO_NUL = r"^[^\x00]*$"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
_NUM = r"(0|[1-9][0-9]*)"
_ID = r"[0-9A-Za-z-]+"
SEMVER_PATTERN = rf"^{_NUM}\.{_NUM}\.{_NUM}(-{_ID}(\.{_ID})*)?(\+{_ID}(\.{_ID})*)?$"

__all__ = [
    "DeleteOut",
    "ErrorOut",
    "PackageOut",
    "PublishOut",
    "RatingIn",
    "RatingsOut",
    "ReleaseDetailOut",
    "ReleaseOut",
    "ResolveIn",
    "ResolveOut",
    "SearchOut",
    "YankIn",
]


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
    status: str = Field(description="published, quarantined (checks pending), failed or held (name review)")
    status_reason: str | None = Field(default=None, description="why a release failed or is held")
    download_url: str


class WheelOut(BaseModel):
    filename: str
    sha256: str
    size: int
    url: str


class ReleaseDetailOut(ReleaseOut):
    manifest: dict[str, Any]
    checks: list[dict[str, Any]] | None = None
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
    reason: str = Field(default="", max_length=1000, pattern=NO_NUL, description="shown to pip users; no NUL bytes")


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
    requirements: dict[
        Annotated[str, Field(min_length=1, max_length=100, pattern=NAME_PATTERN)],
        Annotated[str, Field(max_length=256, pattern=r"^[ -~]*$")],
    ] = Field(
        max_length=64,
        description="plugin name -> semver range, e.g. {\"apt-plugin-moe\": \"^1.2\"}; a range the grammar refuses is a 400",
        json_schema_extra={"additionalProperties": False, "propertyNames": {"pattern": NAME_PATTERN, "minLength": 1, "maxLength": 100}},
    )
    core: str | None = Field(
        default=None, max_length=256, pattern=SEMVER_PATTERN, description="the apt-core version that will run them (semver)"
    )


class ResolveOut(BaseModel):
    packages: list[ReleaseOut]
    pins: dict[str, str]
