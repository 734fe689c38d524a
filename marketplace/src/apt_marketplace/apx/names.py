"""Project names as the packaging spec allows them, and how close two names are.

Python's `re.IGNORECASE` folds `ı` to `I` and `ſ` to `S`, so an unanchored or case-folding
pattern lets look-alike Unicode through; every check here is ASCII-only and anchored with
`\\Z` (a `$` would also match before a trailing newline).
"""

from __future__ import annotations

import re

from packaging.utils import canonicalize_name

__all__ = ["MAX_NAME", "closest_clash", "is_valid_name", "name_problem", "skeleton"]

MAX_NAME = 100
_NAME_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?\Z", re.ASCII)
#: Pairs that read alike in most fonts; a name and its skeleton-twin are one name to a reader.
_CONFUSABLE = (("rn", "m"), ("vv", "w"), ("cl", "d"), ("0", "o"), ("1", "l"), ("i", "l"), ("5", "s"))


def name_problem(name: str) -> str | None:
    """Why `name` cannot be a project name, or None when it can."""
    if not name.isascii():
        return f"{name!r} has non-ASCII characters; project names are ASCII letters, digits, '.', '_' and '-'"
    if len(name) > MAX_NAME:
        return f"{name[:20]!r}... is longer than {MAX_NAME} characters"
    if not _NAME_RE.match(name):
        return f"{name!r} is not a valid project name; use ASCII letters, digits, '.', '_' and '-', starting and ending alphanumeric"
    return None


def is_valid_name(name: str) -> bool:
    return name_problem(name) is None


def skeleton(name: str) -> str:
    """The canonical name with separators dropped and look-alike letters merged."""
    text = canonicalize_name(name).replace("-", "")
    for seen, means in _CONFUSABLE:
        text = text.replace(seen, means)
    return text


def _distance(a: str, b: str, cap: int) -> int:
    """Optimal-string-alignment distance (an adjacent swap counts once), stopping past `cap`."""
    if abs(len(a) - len(b)) > cap:
        return cap + 1
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i] + [0] * len(b)
        for j, cb in enumerate(b, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb))
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                cur[j] = min(cur[j], prev2[j - 2] + 1)
        if min(cur) > cap:
            return cap + 1
        prev2, prev = prev, cur
    return prev[-1]


def closest_clash(name: str, existing: list[str]) -> str | None:
    """An existing project `name` could be mistaken for: the same skeleton, or one or two edits
    away (two only for names long enough that two edits are still a typo, not a new word)."""
    cname = canonicalize_name(name)
    skel = skeleton(cname)
    cap = 2 if len(cname) >= 12 else 1
    for other in existing:
        if other == cname:
            continue
        if skeleton(other) == skel or _distance(cname, other, cap) <= cap:
            return other
    return None
