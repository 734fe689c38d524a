"""Strict Semantic Versioning 2.0 and npm-style ranges.

Plugin versions and the ranges between plugins follow semver rather than PEP 440 because
the marketplace promises compatibility by major version; the simple index translates to
PEP 440 only where pip needs it.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field

__all__ = [
    "InvalidRange",
    "InvalidVersion",
    "Range",
    "Version",
    "parse_range",
    "parse_version",
    "to_pep440",
]

_NUM = r"0|[1-9][0-9]*"
_PRE_ID = r"(?:0|[1-9][0-9]*|[0-9]*[a-zA-Z-][0-9a-zA-Z-]*)"
_BUILD_ID = r"[0-9a-zA-Z-]+"
_SEMVER_RE = re.compile(
    rf"^(?P<major>{_NUM})\.(?P<minor>{_NUM})\.(?P<patch>{_NUM})"
    rf"(?:-(?P<pre>{_PRE_ID}(?:\.{_PRE_ID})*))?"
    rf"(?:\+(?P<build>{_BUILD_ID}(?:\.{_BUILD_ID})*))?\Z",
    re.ASCII,
)
_XR = r"(?:0|[1-9][0-9]*|[xX*])"
_PARTIAL_RE = re.compile(
    rf"^(?P<major>{_XR})(?:\.(?P<minor>{_XR})(?:\.(?P<patch>{_XR})"
    rf"(?:-(?P<pre>{_PRE_ID}(?:\.{_PRE_ID})*))?"
    rf"(?:\+(?P<build>{_BUILD_ID}(?:\.{_BUILD_ID})*))?)?)?\Z",
    re.ASCII,
)
_COMPARATOR_RE = re.compile(r"^(?P<op>\^|~>?|>=|<=|>|<|=)?\s*(?P<ver>\S+)$")
_MAX_TEXT = 256


class InvalidVersion(ValueError):
    """Raised for text that is not a strict semver 2.0 version."""


class InvalidRange(ValueError):
    """Raised for text that is not a range this module understands."""


@functools.total_ordering
@dataclass(frozen=True)
class Version:
    major: int
    minor: int
    patch: int
    prerelease: tuple[int | str, ...] = ()
    build: tuple[str, ...] = field(default=(), compare=False)

    def __str__(self) -> str:
        text = f"{self.major}.{self.minor}.{self.patch}"
        if self.prerelease:
            text += "-" + ".".join(str(p) for p in self.prerelease)
        if self.build:
            text += "+" + ".".join(self.build)
        return text

    @property
    def is_prerelease(self) -> bool:
        return bool(self.prerelease)

    @property
    def release(self) -> tuple[int, int, int]:
        return (self.major, self.minor, self.patch)

    @property
    def precedence(self) -> str:
        """The version without build metadata: two versions with equal precedence are one release."""
        return str(Version(self.major, self.minor, self.patch, self.prerelease))

    def _key(self) -> tuple:
        if not self.prerelease:
            pre: tuple = ((2,),)
        else:
            pre = tuple((0, p, "") if isinstance(p, int) else (1, 0, p) for p in self.prerelease)
            pre = ((1,), *pre)
        return (self.major, self.minor, self.patch, pre)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __lt__(self, other: Version) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return _pre_cmp(self, other) < 0


def _pre_cmp(a: Version, b: Version) -> int:
    if a.release != b.release:
        return -1 if a.release < b.release else 1
    if not a.prerelease or not b.prerelease:
        if a.prerelease == b.prerelease:
            return 0
        return -1 if a.prerelease else 1
    for x, y in zip(a.prerelease, b.prerelease, strict=False):
        if x == y:
            continue
        if isinstance(x, int) and isinstance(y, int):
            return -1 if x < y else 1
        if isinstance(x, int):
            return -1
        if isinstance(y, int):
            return 1
        return -1 if x < y else 1
    if len(a.prerelease) == len(b.prerelease):
        return 0
    return -1 if len(a.prerelease) < len(b.prerelease) else 1


def _split_pre(text: str | None) -> tuple[int | str, ...]:
    if not text:
        return ()
    return tuple(int(p) if p.isdigit() else p for p in text.split("."))


def parse_version(text: str) -> Version:
    if not isinstance(text, str) or len(text) > _MAX_TEXT:
        raise InvalidVersion(f"{text!r} is not a semver version")
    return _parse_version(text)


@functools.lru_cache(maxsize=65536)
def _parse_version(text: str) -> Version:
    """Cached: versions are immutable and the same few repeat across every search and
    resolution, where parsing them again dominated the ranking."""
    m = _SEMVER_RE.match(text)
    if not m:
        raise InvalidVersion(f"{text!r} is not a strict semver 2.0 version (expected MAJOR.MINOR.PATCH)")
    return Version(
        int(m["major"]),
        int(m["minor"]),
        int(m["patch"]),
        _split_pre(m["pre"]),
        tuple(m["build"].split(".")) if m["build"] else (),
    )


@dataclass(frozen=True)
class _Comparator:
    op: str
    version: Version
    named: bool

    def test(self, v: Version) -> bool:
        c = _pre_cmp(v, self.version)
        return {
            "<": c < 0,
            "<=": c <= 0,
            ">": c > 0,
            ">=": c >= 0,
            "=": c == 0,
        }[self.op]

    def __str__(self) -> str:
        return f"{self.op}{self.version}" if self.op != "=" else f"={self.version}"


def _floor(parts: list[int | None], pre: tuple[int | str, ...]) -> Version:
    return Version(parts[0] or 0, parts[1] or 0, parts[2] or 0, pre if parts[2] is not None else ())


def _ceil_exclusive(major: int, minor: int | None = None, patch: int | None = None) -> Version:
    return Version(major, minor or 0, patch or 0, (0,))


def _partial(text: str) -> tuple[list[int | None], tuple[int | str, ...]]:
    m = _PARTIAL_RE.match(text)
    if not m:
        raise InvalidRange(f"{text!r} is not a version or partial version")
    parts: list[int | None] = []
    wild = False
    for key in ("major", "minor", "patch"):
        value = m[key]
        if value is None or value in "xX*" or wild:
            wild = True
            parts.append(None)
        else:
            parts.append(int(value))
    pre = _split_pre(m["pre"]) if parts[2] is not None else ()
    return parts, pre


def _expand(op: str, text: str) -> list[_Comparator]:
    parts, pre = _partial(text)
    major, minor, patch = parts
    named = bool(pre)
    if major is None:
        if op in ("<", ">"):
            return [_Comparator("<", Version(0, 0, 0, (0,)), False)]
        return []
    low = _floor(parts, pre)

    def lo() -> _Comparator:
        return _Comparator(">=", low, named)

    if op == "^":
        if major != 0 or minor is None:
            hi = _ceil_exclusive(major + 1)
        elif minor != 0 or patch is None:
            hi = _ceil_exclusive(0, minor + 1)
        else:
            hi = _ceil_exclusive(0, 0, patch + 1)
        return [lo(), _Comparator("<", hi, False)]
    if op in ("~", "~>"):
        hi = _ceil_exclusive(major + 1) if minor is None else _ceil_exclusive(major, minor + 1)
        return [lo(), _Comparator("<", hi, False)]
    if op == "=" or op == "":
        if patch is not None:
            return [_Comparator("=", low, named)]
        hi = _ceil_exclusive(major + 1) if minor is None else _ceil_exclusive(major, minor + 1)
        return [lo(), _Comparator("<", hi, False)]
    if op == ">=":
        return [lo()]
    if op == "<":
        return [_Comparator("<", low if patch is not None else Version(*low.release, (0,)), named)]
    if op == ">":
        if patch is not None:
            return [_Comparator(">", low, named)]
        hi = _ceil_exclusive(major + 1) if minor is None else _ceil_exclusive(major, minor + 1)
        return [_Comparator(">=", hi, False)]
    if op == "<=":
        if patch is not None:
            return [_Comparator("<=", low, named)]
        hi = _ceil_exclusive(major + 1) if minor is None else _ceil_exclusive(major, minor + 1)
        return [_Comparator("<", hi, False)]
    raise InvalidRange(f"unknown operator {op!r}")


def _hyphen(lo_text: str, hi_text: str) -> list[_Comparator]:
    out = _expand(">=", lo_text)
    parts, pre = _partial(hi_text)
    if parts[0] is None:
        return out
    if parts[2] is not None:
        return out + [_Comparator("<=", _floor(parts, pre), bool(pre))]
    return out + _expand("<=", hi_text)


@dataclass(frozen=True)
class Range:
    """A union of comparator sets; a version matches if it satisfies every comparator of one set."""

    text: str
    sets: tuple[tuple[_Comparator, ...], ...]

    def __str__(self) -> str:
        return self.text

    def contains(self, version: Version | str, include_prerelease: bool = False) -> bool:
        """npm's rule: a pre-release matches only if a comparator names a pre-release of the same
        major.minor.patch, so `^1.2.0` never drifts onto `2.0.0-alpha` or `1.3.0-rc.1`."""
        v = parse_version(version) if isinstance(version, str) else version
        for comparators in self.sets:
            if not all(c.test(v) for c in comparators):
                continue
            if not v.prerelease or include_prerelease:
                return True
            if any(c.named and c.version.release == v.release for c in comparators):
                return True
        return False

    def __contains__(self, version: Version | str) -> bool:
        return self.contains(version)

    @property
    def exact(self) -> Version | None:
        """The version if the range pins exactly one (`=1.2.3` or `1.2.3`)."""
        if len(self.sets) == 1 and len(self.sets[0]) == 1 and self.sets[0][0].op == "=":
            return self.sets[0][0].version
        return None


def parse_range(text: str) -> Range:
    if not isinstance(text, str) or len(text) > _MAX_TEXT:
        raise InvalidRange(f"{text!r} is not a version range")
    stripped = text.strip()
    sets: list[tuple[_Comparator, ...]] = []
    for alternative in stripped.split("||"):
        alt = alternative.strip()
        if not alt and "||" in stripped:
            raise InvalidRange(f"{text!r} has an empty alternative around '||'")
        hy = re.fullmatch(r"(\S+)\s+-\s+(\S+)", alt)
        if hy:
            sets.append(tuple(_hyphen(hy[1], hy[2])))
            continue
        alt = re.sub(r"(\^|~>?|>=|<=|>|<|=)\s+", r"\1", alt)
        comparators: list[_Comparator] = []
        for token in re.split(r"[\s,]+", alt):
            if not token:
                continue
            m = _COMPARATOR_RE.match(token)
            if not m:
                raise InvalidRange(f"{text!r}: cannot read {token!r}")
            try:
                comparators.extend(_expand(m["op"] or "", m["ver"]))
            except InvalidRange as exc:
                raise InvalidRange(f"{text!r}: {exc}") from None
        sets.append(tuple(comparators))
    if not sets:
        sets.append(())
    return Range(stripped or "*", tuple(sets))


_PEP440_PRE = {"alpha": "a", "a": "a", "beta": "b", "b": "b", "rc": "rc", "c": "rc"}


def to_pep440(version: Version | str) -> str:
    """The PEP 440 spelling pip shows for a semver version, used to tie a wheel to its release."""
    v = parse_version(version) if isinstance(version, str) else version
    base = f"{v.major}.{v.minor}.{v.patch}"
    pre = list(v.prerelease)
    if not pre:
        return base
    out = base
    if isinstance(pre[0], str) and pre[0].lower() in _PEP440_PRE:
        tag = _PEP440_PRE[str(pre.pop(0)).lower()]
        num = pre.pop(0) if pre and isinstance(pre[0], int) else 0
        out += f"{tag}{num}"
    if pre and pre[0] == "dev":
        pre.pop(0)
        num = pre.pop(0) if pre and isinstance(pre[0], int) else 0
        out += f".dev{num}"
    if pre:
        raise InvalidVersion(f"{v} has a pre-release that PEP 440 cannot spell; use alpha.N, beta.N, rc.N or dev.N")
    return out


def from_pep440(text: str) -> Version:
    """The semver spelling of a PEP 440 version from a pyproject (1.2.0rc1 -> 1.2.0-rc.1)."""
    m = re.fullmatch(
        r"([0-9]+)\.([0-9]+)\.([0-9]+)(?:(a|b|rc)([0-9]+))?(?:\.dev([0-9]+))?", text.strip().lower(), re.ASCII
    )
    if not m:
        raise InvalidVersion(
            f"{text!r} cannot be a plugin version: use MAJOR.MINOR.PATCH with an optional aN, bN, rcN or .devN"
        )
    pre: list[int | str] = []
    if m[4]:
        pre += [{"a": "alpha", "b": "beta", "rc": "rc"}[m[4]], int(m[5])]
    if m[6] is not None:
        pre += ["dev", int(m[6])]
    return Version(int(m[1]), int(m[2]), int(m[3]), tuple(pre))
