"""Dependency resolution between plugins, with resolvelib doing the backtracking.

The same code runs in the server (`POST /api/v1/resolve`) and in the client, so both agree on
what a range admits: strict semver, pre-releases only when a range names one of the same
major.minor.patch, yanked releases only when pinned exactly, and the apt-core range of every
candidate checked against the core that will run it.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from packaging.utils import canonicalize_name
from resolvelib import AbstractProvider, BaseReporter, ResolutionImpossible, ResolutionTooDeep, Resolver
from resolvelib.structs import RequirementInformation

from .semver import InvalidRange, InvalidVersion, Range, Version, parse_range, parse_version

__all__ = [
    "Catalogue",
    "MemoryCatalogue",
    "ReleaseInfo",
    "Resolution",
    "ResolutionError",
    "Requirement",
    "resolve",
]

_MAX_ROUNDS = 2000


@dataclass(frozen=True, eq=False)
class ReleaseInfo:
    name: str
    version: Version
    requires: Mapping[str, str] = field(default_factory=dict)
    core: str = "*"
    yanked: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", canonicalize_name(self.name))
        if isinstance(self.version, str):
            object.__setattr__(self, "version", parse_version(self.version))

    def __str__(self) -> str:
        return f"{self.name} {self.version}"


class Catalogue(Protocol):
    def releases(self, name: str) -> Sequence[ReleaseInfo]:
        """Every published release of a canonical name (empty if the name is unknown)."""


@dataclass(frozen=True, eq=False)
class Requirement:
    name: str
    range: Range
    parent: ReleaseInfo | None = None

    def __str__(self) -> str:
        return f"{self.name} {self.range}"


class ResolutionError(Exception):
    """No set of releases satisfies the request; `explanation` is for a person to read."""

    def __init__(self, explanation: str, conflicts: Sequence[str] = ()) -> None:
        super().__init__(explanation)
        self.explanation = explanation
        self.conflicts = list(conflicts)


@dataclass(frozen=True)
class Resolution:
    """`rounds` and `rejected` say how hard resolvelib worked (candidates it pinned and then
    had to give up while backtracking), which is what a slow resolution needs explained by."""

    packages: Mapping[str, ReleaseInfo]
    order: Sequence[str]
    rounds: int = 0
    rejected: int = 0

    def pins(self) -> dict[str, str]:
        return {name: str(self.packages[name].version) for name in self.order}


class _Provider(AbstractProvider):
    def __init__(self, catalogue: Catalogue, core: Version | None) -> None:
        self.catalogue = catalogue
        self.core = core
        self._cache: dict[str, list[ReleaseInfo]] = {}
        self.seen: dict[str, list[Requirement]] = {}

    def all_releases(self, name: str) -> list[ReleaseInfo]:
        if name not in self._cache:
            self._cache[name] = sorted(self.catalogue.releases(name), key=lambda r: r.version, reverse=True)
        return self._cache[name]

    def core_ok(self, release: ReleaseInfo) -> bool:
        if self.core is None:
            return True
        try:
            return parse_range(release.core).contains(self.core, include_prerelease=True)
        except InvalidRange:
            return False

    def identify(self, requirement_or_candidate: Requirement | ReleaseInfo) -> str:
        return requirement_or_candidate.name

    def get_preference(self, identifier, resolutions, candidates, information, backtrack_causes):  # type: ignore[no-untyped-def]
        infos = list(information[identifier])
        direct = any(info.parent is None for info in infos)
        causes = {c.requirement.name for c in backtrack_causes} | {
            c.parent.name for c in backtrack_causes if c.parent is not None
        }
        return (identifier not in causes, not direct, sum(1 for _ in candidates[identifier]), identifier)

    def find_matches(self, identifier, requirements, incompatibilities):  # type: ignore[no-untyped-def]
        reqs = list(requirements[identifier])
        known = self.seen.setdefault(identifier, [])
        for req in reqs:
            if all(req is not k for k in known):
                known.append(req)
        # resolvelib hands back every incompatibility ever recorded, duplicates included (tens of
        # thousands after some backjumping): a set of the candidate objects themselves (identity
        # hashing, in C) keeps this linear and cheap where hashing each Version dominated.
        bad = set(incompatibilities[identifier])
        pinned = {r.range.exact for r in reqs if r.range.exact is not None}
        out = []
        for release in self.all_releases(identifier):
            if release in bad or not self.core_ok(release):
                continue
            if release.yanked and release.version not in pinned:
                continue
            if all(r.range.contains(release.version) for r in reqs):
                out.append(release)
        return out

    def is_satisfied_by(self, requirement: Requirement, candidate: ReleaseInfo) -> bool:
        return requirement.range.contains(candidate.version)

    def get_dependencies(self, candidate: ReleaseInfo) -> Iterable[Requirement]:
        return [
            Requirement(canonicalize_name(name), parse_range(rng), parent=candidate)
            for name, rng in sorted(candidate.requires.items())
        ]


class _ConflictLog(BaseReporter):
    """resolvelib reports only the last clash; the explanation needs every one it backtracked over."""

    def __init__(self) -> None:
        self.causes: list[RequirementInformation] = []
        self.rounds = 0
        self.rejected = 0

    def starting_round(self, index: int) -> None:
        self.rounds = index + 1

    def rejecting_candidate(self, criterion: object, candidate: object) -> None:
        self.rejected += 1

    def resolving_conflicts(self, causes: Collection[RequirementInformation[Any, Any]]) -> None:
        self.causes.extend(causes)


def _parse_requests(requirements: Mapping[str, str]) -> list[Requirement]:
    out = []
    for name, text in requirements.items():
        try:
            out.append(Requirement(canonicalize_name(name), parse_range(text or "*")))
        except InvalidRange as exc:
            raise ValueError(f"requirement {name}: {exc}") from None
    return out


def resolve(
    requirements: Mapping[str, str],
    catalogue: Catalogue,
    core_version: str | Version | None = None,
) -> Resolution:
    """Pin one release per plugin; raises ResolutionError with a readable explanation."""
    try:
        core = parse_version(core_version) if isinstance(core_version, str) else core_version
    except InvalidVersion as exc:
        raise ValueError(f"core version: {exc}") from None
    requests = _parse_requests(requirements)
    provider = _Provider(catalogue, core)
    reporter = _ConflictLog()
    resolver: Resolver = Resolver(provider, reporter)
    try:
        result = resolver.resolve(requests, max_rounds=_MAX_ROUNDS)
    except ResolutionImpossible as exc:
        raise _explain([*reporter.causes, *exc.causes], provider) from None
    except ResolutionTooDeep:
        raise ResolutionError(
            "the requirements need too much backtracking to resolve; pin some plugins to exact versions"
        ) from None
    mapping: dict[str, ReleaseInfo] = dict(result.mapping)
    order: list[str] = []
    visiting: set[str] = set()

    def visit(name: str) -> None:
        if name in order or name in visiting:
            return
        visiting.add(name)
        for dep in sorted(canonicalize_name(d) for d in mapping[name].requires):
            if dep in mapping:
                visit(dep)
        order.append(name)

    for name in sorted(mapping):
        visit(name)
    return Resolution(packages=mapping, order=order, rounds=reporter.rounds, rejected=reporter.rejected)


def _chain(req: Requirement, provider: _Provider) -> list[str]:
    """Walk from a constraint up to the user's request so the reader sees why it applies."""
    steps = [f"{req.parent} requires {req}" if req.parent else f"you requested {req}"]
    parent = req.parent
    visited: set[str] = set()
    while parent is not None and parent.name not in visited and len(steps) < 12:
        visited.add(parent.name)
        reasons = [r for r in provider.seen.get(parent.name, []) if r.range.contains(parent.version, include_prerelease=parent.version.is_prerelease)]
        if not reasons:
            break
        reasons.sort(key=lambda r: (r.parent is not None, r.parent.name if r.parent else ""))
        up = reasons[0]
        steps.append(f"{up.parent} requires {up}" if up.parent else f"you requested {up}")
        parent = up.parent
    return list(reversed(steps))


def _describe_versions(name: str, provider: _Provider, reqs: Sequence[Requirement]) -> str:
    releases = provider.all_releases(name)
    if not releases:
        return f"{name} is not in the marketplace"
    pinned = {r.range.exact for r in reqs if r.range.exact is not None}
    usable, notes = [], []
    for release in sorted(releases, key=lambda r: r.version):
        if release.yanked and release.version not in pinned:
            notes.append(f"{release.version} is yanked")
        elif not provider.core_ok(release):
            notes.append(f"{release.version} needs apt-core {release.core} but the core is {provider.core}")
        else:
            usable.append(str(release.version))
    text = f"{name} has {'versions ' + ', '.join(usable) if usable else 'no usable version'}"
    if notes:
        text += " (" + "; ".join(notes) + ")"
    return text


def _explain(causes: Sequence[RequirementInformation], provider: _Provider) -> ResolutionError:
    by_name: dict[str, list[Requirement]] = {}
    for cause in causes:
        req = cause.requirement
        group = by_name.setdefault(req.name, [])
        if all(str(r) != str(req) or r.parent is not req.parent for r in group):
            group.append(req)
    lines: list[str] = []
    for name, reqs in by_name.items():
        by_parent: dict[str | None, list[Requirement]] = {}
        for req in reqs:
            by_parent.setdefault(req.parent.name if req.parent else None, []).append(req)
        chains, needs = [], []
        for parent_name, group in by_parent.items():
            ranges = sorted({str(r.range) for r in group})
            need = ranges[0] if len(ranges) == 1 else "(" + " or ".join(ranges) + ")"
            needs.append(need)
            steps = _chain(group[0], provider)
            if parent_name is not None and len(group) > 1:
                parents = sorted((r.parent for r in group if r.parent is not None), key=lambda p: p.version)
                versions = ", ".join(str(p.version) for p in parents)
                steps[-1] = f"every candidate {parent_name} ({versions}) requires {name} {need}"
            chains.append(" and ".join(steps))
        joined = " and ".join(dict.fromkeys(needs))
        because = "Because " + ", and because ".join(chains)
        if not provider.all_releases(name):
            lines.append(f"{because}, and {name} is not in the marketplace, the requirements are unsatisfiable.")
            continue
        versions = _describe_versions(name, provider, reqs)
        lines.append(f"{because}, we need {name} {joined}.")
        if len(needs) > 1:
            lines.append(f"And because {versions}, and no version satisfies {joined} together, the requirements are unsatisfiable.")
        else:
            lines.append(f"And because {versions}, and none of them matches {joined}, the requirements are unsatisfiable.")
    return ResolutionError("\n".join(lines), conflicts=list(by_name))


class MemoryCatalogue:
    """A catalogue from plain data, for tests and for clients that fetched metadata already."""

    def __init__(self, releases: Iterable[ReleaseInfo]) -> None:
        self._by_name: dict[str, list[ReleaseInfo]] = {}
        for release in releases:
            self._by_name.setdefault(canonicalize_name(release.name), []).append(release)

    def releases(self, name: str) -> Sequence[ReleaseInfo]:
        return self._by_name.get(canonicalize_name(name), [])
