"""`apx.json`, the manifest that speaks for every byte of an archive.

The server stores and indexes what this model accepts, so every field is checked here and a
rejection reads as one sentence naming the field, not as a pydantic error dump.
"""

from __future__ import annotations

import contextlib
import json
import re
from typing import Any, Literal

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name
from pydantic import BaseModel, ConfigDict, PrivateAttr, ValidationError, field_validator, model_validator

from ..semver import InvalidRange, InvalidVersion, Version, parse_range, parse_version
from .errors import ApxError
from .names import is_valid_name, name_problem

__all__ = ["FORMAT", "MANIFEST", "SIGNATURE", "Manifest"]

MANIFEST = "apx.json"
SIGNATURE = "apx.sig"
FORMAT = 1
_PROVIDES_RE = re.compile(r"[a-z][a-z0-9_]{0,63}\.[a-z0-9][a-z0-9_]{0,63}\Z", re.ASCII)
_SHA_RE = re.compile(r"[0-9a-f]{64}\Z", re.ASCII)
_WHEEL_PATH_RE = re.compile(r"wheels/[A-Za-z0-9._+-]{1,200}\.whl\Z", re.ASCII)


def _valid_name(name: str) -> bool:
    return is_valid_name(name)


class Manifest(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    format: int = FORMAT
    name: str
    version: str
    summary: str = ""
    provides: tuple[str, ...] = ()
    requires: dict[str, str] = {}
    core: str = "*"
    python: str = ""
    sandbox: Literal["required", "allowed"] = "allowed"
    files: dict[str, str] = {}

    _semver: Version = PrivateAttr()

    @field_validator("format")
    @classmethod
    def _format(cls, value: int) -> int:
        if value != FORMAT:
            raise ValueError(f"apx.json format {value!r} is not supported (expected {FORMAT})")
        return value

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        problem = name_problem(value)
        if problem:
            raise ValueError(f"apx.json name: {problem}")
        return value

    @field_validator("summary")
    @classmethod
    def _summary(cls, value: str) -> str:
        if len(value) > 512 or "\x00" in value:
            raise ValueError("apx.json summary must be a string of at most 512 characters without NUL bytes")
        return value

    @field_validator("provides")
    @classmethod
    def _provides(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(value) > 64:
            raise ValueError("apx.json provides must be a list of at most 64 'kind.name' strings")
        for item in value:
            if not _PROVIDES_RE.match(item):
                raise ValueError(
                    f"apx.json provides entry {item[:80]!r} is not 'kind.name' in lower-case ASCII, each part at most 64 characters"
                )
        if len(set(value)) != len(value):
            raise ValueError("apx.json provides lists an entry twice")
        return value

    @field_validator("requires")
    @classmethod
    def _requires(cls, value: dict[str, str]) -> dict[str, str]:
        if len(value) > 64:
            raise ValueError("apx.json requires must map at most 64 plugin names to semver ranges")
        for dep, rng in value.items():
            if not _valid_name(dep):
                raise ValueError(f"apx.json requires names {dep!r}, which is not a valid package name")
            try:
                parse_range(rng)
            except InvalidRange as exc:
                raise ValueError(f"apx.json requires {dep}: {exc}") from None
        if len({canonicalize_name(d) for d in value}) != len(value):
            raise ValueError("apx.json requires names one package twice")
        return dict(sorted(value.items()))

    @field_validator("core")
    @classmethod
    def _core(cls, value: str) -> str:
        try:
            parse_range(value)
        except InvalidRange as exc:
            raise ValueError(f"apx.json core: {exc}") from None
        return value

    @field_validator("python")
    @classmethod
    def _python(cls, value: str) -> str:
        if len(value) <= 100 and value.isascii() and "\x00" not in value:
            with contextlib.suppress(InvalidSpecifier):
                SpecifierSet(value)
                return value
        raise ValueError(f"apx.json python {value[:80]!r} is not a PEP 440 specifier such as '>=3.10' (at most 100 ASCII characters)")

    @field_validator("files")
    @classmethod
    def _files(cls, value: dict[str, str]) -> dict[str, str]:
        for path, digest in value.items():
            if not _WHEEL_PATH_RE.match(path):
                raise ValueError(
                    f"apx.json files lists {path[:80]!r}; only wheels/<name>.whl entries of at most 200 ASCII characters are allowed"
                )
            if not _SHA_RE.match(digest):
                raise ValueError(f"apx.json files: {path} needs a lower-case hex sha256")
        return dict(sorted(value.items()))

    @model_validator(mode="after")
    def _whole(self) -> Manifest:
        try:
            self._semver = parse_version(self.version)
        except InvalidVersion as exc:
            raise ValueError(f"apx.json version: {exc}") from None
        if any(canonicalize_name(dep) == self.canonical_name for dep in self.requires):
            raise ValueError("apx.json requires the package itself")
        return self

    @property
    def canonical_name(self) -> str:
        return canonicalize_name(self.name)

    @property
    def semver(self) -> Version:
        """The version as parsed while validating, so no caller parses it a second time."""
        return self._semver

    def to_json(self) -> bytes:
        """Sorted and indented so the same manifest always packs to the same bytes."""
        return (json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def parse(cls, data: Any) -> Manifest:
        """Validate a decoded `apx.json` (or keyword data), raising ApxError with one sentence."""
        if not isinstance(data, dict):
            raise ApxError("apx.json must hold a JSON object")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ApxError(_explain(exc)) from None


def _explain(exc: ValidationError) -> str:
    errors = exc.errors(include_url=False)
    unknown = [str(e["loc"][0]) for e in errors if e["type"] == "extra_forbidden"]
    if unknown:
        return f"apx.json has unknown fields: {', '.join(sorted(unknown))}"
    first = errors[0]
    if first["type"] == "value_error":
        return str(first["ctx"]["error"])
    where = ".".join(str(p) for p in first["loc"]) or "document"
    return f"apx.json {where}: {first['msg']}"
