"""Provider discovery from Python entry points.

Listing reads package metadata only; a provider class is imported the first time it is asked
for and cached. A provider that cannot be imported or whose default config does not validate
is *broken*: it is reported with its reason, never allowed to crash discovery, and requests
for it fall back like requests for a missing provider (unless ``strict``).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import logging
import traceback
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from apt import config as cfg
from apt.errors import ProviderError
from apt.providers import KINDS, Provider, check_provider_class

log = logging.getLogger("apt")

GROUP = "apt.providers"
DEFAULTS = {"attention": "tva", "ffn": "dense", "retriever": "bm25", "voter": "self_consistency",
            "tokenizer": "char"}
FALLBACKS = {"attention": "sdpa"}
#: Kinds every model needs; the others are optional and may be left out with a warning.
REQUIRED_KINDS = ("attention", "ffn")
ALIASES = {"tva_default": "tva", "bistate_default": "bistate"}
#: First-party distributions, so a missing provider's warning can say what to install.
PACKAGES = {
    "attention.tva": "apt-plugin-tva",
    "attention.flash_v2": "apt-plugin-flash",
    "router.topk_moe": "apt-plugin-moe",
    "align.bistate": "apt-plugin-align",
    "retriever.bm25": "apt-plugin-retriever",
    "retriever.dense": "apt-plugin-retriever",
    "voter.self_consistency": "apt-plugin-voter",
    "quant.int8_dynamic": "apt-plugin-quant",
    "quant.bf16": "apt-plugin-quant",
    "tokenizer.bpe": "apt-plugin-bpe",
    "encoder.vit": "apt-plugin-vision",
    "encoder.logmel_conv": "apt-plugin-audio",
}


@dataclass(frozen=True)
class ProviderInfo:
    kind: str
    name: str
    value: str
    distribution: str
    version: str
    default: bool
    #: Set when the entry itself is unusable before import (bad name, duplicate).
    problem: str | None = None

    @property
    def key(self) -> str:
        return f"{self.kind}.{self.name}"


@dataclass(frozen=True)
class Resolution:
    """What a request for ``kind`` resolved to; ``provider`` is None for an optional kind left out."""

    kind: str
    requested: str | None
    name: str | None
    provider: type[Provider] | None
    info: ProviderInfo | None
    warning: str | None = None


class Registry:
    def __init__(self, eps: Iterable[EntryPoint] | None = None) -> None:
        self._eps = eps
        self._cache: dict[str, type[Provider]] = {}
        self._errors: dict[str, str] = {}
        self._warned: set[str] = set()

    @functools.cached_property
    def _infos(self) -> dict[str, ProviderInfo]:
        found: dict[str, ProviderInfo] = {}
        eps = entry_points(group=GROUP) if self._eps is None else self._eps
        for ep in sorted(eps, key=lambda e: (e.name, _dist_name(e))):
            kind, _, name = ep.name.partition(".")
            problem = None
            if kind not in KINDS or not name:
                problem = f"entry point name {ep.name!r} must be '<kind>.<name>' with kind in {', '.join(KINDS)}"
            info = ProviderInfo(kind, name, ep.value, _dist_name(ep), _dist_version(ep),
                                DEFAULTS.get(kind) == name, problem)
            if info.key in found and problem is None:
                first = found[info.key]
                info = dataclasses.replace(info, problem=f"duplicate of {info.key} from {first.distribution}")
                found[f"{info.key}@{info.distribution}"] = info
                continue
            found[info.key] = info
        return found

    def infos(self, kind: str | None = None) -> list[ProviderInfo]:
        """Every provider entry (metadata only, nothing imported), sorted by kind then name."""
        return sorted((i for i in self._infos.values() if kind is None or i.kind == kind),
                      key=lambda i: (KINDS.index(i.kind) if i.kind in KINDS else len(KINDS), i.name))

    def info(self, kind: str, name: str) -> ProviderInfo | None:
        return self._infos.get(f"{kind}.{ALIASES.get(name, name)}")

    def load(self, kind: str, name: str) -> type[Provider]:
        """Import and check a provider class; raise :class:`ProviderError` with the reason."""
        name = ALIASES.get(name, name)
        key = f"{kind}.{name}"
        if key in self._cache:
            return self._cache[key]
        if key in self._errors:
            raise ProviderError(self._errors[key])
        info = self._infos.get(key)
        if info is None:
            raise ProviderError(f"no {kind} provider named {name!r} is installed{_install_hint(key)}")
        try:
            cls = self._import(info)
        except ProviderError as err:
            self._errors[key] = str(err)
            raise
        self._cache[key] = cls
        return cls

    def problem(self, info: ProviderInfo) -> str | None:
        """Why a listed provider is unusable, or None (imports it)."""
        try:
            self.load(info.kind, info.name) if info.problem is None else None
        except ProviderError as err:
            return str(err)
        return info.problem

    def resolve(self, kind: str, requested: str | None, *, strict: bool = False) -> Resolution:
        """Pick the provider for ``kind``: the request, else the default, else the fallback.

        A fallback is announced once per process with a warning naming the package to install;
        ``strict`` turns any fallback into an error.
        """
        wanted = ALIASES.get(requested, requested) if requested else DEFAULTS.get(kind)
        if wanted is None:
            return Resolution(kind, requested, None, None, None)
        try:
            return Resolution(kind, requested, wanted, self.load(kind, wanted), self.info(kind, wanted))
        except ProviderError as err:
            reason = str(err)
        if strict:
            raise ProviderError(f"{reason} (--strict forbids falling back)")
        fallback = FALLBACKS.get(kind)
        if fallback is None or fallback == wanted:
            if kind in REQUIRED_KINDS:
                raise ProviderError(reason)
            message = f"{reason}; continuing without one ({kind} is optional)"
            self._warn_once(f"{kind}.{wanted}", message)
            return Resolution(kind, requested, None, None, None, message)
        message = f"{reason}; falling back to {kind} provider {fallback!r}"
        self._warn_once(f"{kind}.{wanted}", message)
        return Resolution(kind, requested, fallback, self.load(kind, fallback), self.info(kind, fallback), message)

    def make(self, kind: str, name: str, options: Mapping[str, Any] | None) -> Provider:
        """Instantiate a provider with its config validated from ``options``."""
        cls = self.load(kind, name)
        config: Any = cfg.build(cls.Config, options or {}, f"providers.{kind}.{cls.name}")
        return cls(config)

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message)

    def _import(self, info: ProviderInfo) -> type[Provider]:
        if info.problem:
            raise ProviderError(f"{info.key} from {info.distribution} is broken: {info.problem}")
        module_name, _, attr = info.value.partition(":")
        try:
            obj: Any = importlib.import_module(module_name)
            for part in attr.split(".") if attr else ():
                obj = getattr(obj, part)
        except Exception as err:  # a plugin's import may fail in any way; report, never crash
            last = traceback.format_exception_only(type(err), err)[-1].strip()
            raise ProviderError(f"{info.key} from {info.distribution} is broken: cannot import "
                                f"{info.value}: {last}") from None
        try:
            return check_provider_class(obj, info.key)
        except ProviderError as err:
            raise ProviderError(f"{info.key} from {info.distribution} is broken: {err}") from None


def _install_hint(key: str) -> str:
    package = PACKAGES.get(key)
    return f" (pip install {package})" if package else ""


def _dist_name(ep: EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return dist.metadata["Name"] if dist is not None else "?"


def _dist_version(ep: EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return dist.version if dist is not None else "?"


@functools.cache
def default_registry() -> Registry:
    """The process-wide registry (entry points are read once per process)."""
    return Registry()
