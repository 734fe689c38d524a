from __future__ import annotations

import pytest

from apt_marketplace.semver import InvalidRange, InvalidVersion, from_pep440, parse_range, parse_version, to_pep440


def test_precedence_follows_semver_spec_example() -> None:
    ordered = [
        "1.0.0-alpha",
        "1.0.0-alpha.1",
        "1.0.0-alpha.beta",
        "1.0.0-beta",
        "1.0.0-beta.2",
        "1.0.0-beta.11",
        "1.0.0-rc.1",
        "1.0.0",
        "1.0.1",
        "1.1.0",
        "2.0.0",
    ]
    versions = [parse_version(v) for v in ordered]
    assert sorted(reversed(versions)) == versions
    assert [str(v) for v in versions] == ordered


def test_build_metadata_is_ignored_for_precedence() -> None:
    a, b = parse_version("1.0.0+build.1"), parse_version("1.0.0+exp.sha.5114f85")
    assert a == b and hash(a) == hash(b)
    assert str(a) == "1.0.0+build.1" and a.precedence == "1.0.0"


@pytest.mark.parametrize(
    "text",
    ["1.0", "01.0.0", "1.0.0-01", "v1.0.0", "1.0.0-", "1.0.0+", "1.0.0-a..b", " 1.0.0", "1.0.0.0", "", "1.0.0-Ä"],
)
def test_rejects_non_strict_versions(text: str) -> None:
    with pytest.raises(InvalidVersion):
        parse_version(text)


@pytest.mark.parametrize(
    ("rng", "inside", "outside"),
    [
        ("^1.2", ["1.2.0", "1.9.9"], ["1.1.9", "2.0.0", "2.0.0-alpha"]),
        ("^1.2.3", ["1.2.3", "1.99.0"], ["1.2.2", "2.0.0"]),
        ("^0.2.3", ["0.2.3", "0.2.9"], ["0.3.0", "0.2.2"]),
        ("^0.0.3", ["0.0.3"], ["0.0.4", "0.0.2"]),
        ("~1.2.3", ["1.2.3", "1.2.9"], ["1.3.0", "1.2.2"]),
        ("~1.2", ["1.2.0", "1.2.5"], ["1.3.0"]),
        ("~1", ["1.0.0", "1.9.0"], ["2.0.0"]),
        (">=1.0 <2.0", ["1.0.0", "1.9.9"], ["0.9.9", "2.0.0"]),
        (">=1.0, <2.0", ["1.5.0"], ["2.0.0"]),
        (">1.2", ["1.3.0"], ["1.2.9"]),
        ("<=1.2", ["1.2.9", "0.1.0"], ["1.3.0"]),
        ("1.2.x", ["1.2.0", "1.2.7"], ["1.3.0"]),
        ("*", ["0.0.1", "9.9.9"], ["1.0.0-rc.1"]),
        ("1.2.3", ["1.2.3"], ["1.2.4"]),
        ("=1.2.3", ["1.2.3"], ["1.2.2"]),
        ("1.2.3 - 2.3", ["1.2.3", "2.3.9"], ["2.4.0", "1.2.2"]),
        ("^1.0 || ^3.0", ["1.5.0", "3.1.0"], ["2.0.0"]),
    ],
)
def test_ranges(rng: str, inside: list[str], outside: list[str]) -> None:
    r = parse_range(rng)
    for v in inside:
        assert r.contains(v), f"{v} should be in {rng}"
    for v in outside:
        assert not r.contains(v), f"{v} should not be in {rng}"


def test_prerelease_only_when_range_names_same_release() -> None:
    r = parse_range(">=1.2.3-beta.2")
    assert r.contains("1.2.3-beta.3")
    assert r.contains("1.2.3")
    assert not r.contains("1.2.4-alpha.1")
    assert parse_range("^1.2.3-beta.2").contains("1.2.3-rc.1")
    assert not parse_range("^1.2.3-beta.2").contains("1.3.0-rc.1")
    assert not parse_range("^1.2.3-beta.2").contains("1.2.3-alpha.9")
    assert parse_range("^1.2").contains("1.3.0-rc.1", include_prerelease=True)


def test_exact_pin() -> None:
    assert str(parse_range("=1.2.3").exact) == "1.2.3"
    assert parse_range("^1.2.3").exact is None


@pytest.mark.parametrize("text", ["^", ">=1.0 <", "1.2.3.4", "^a.b", "1.0 || ", "~=1.0", ">>1"])
def test_bad_ranges(text: str) -> None:
    with pytest.raises(InvalidRange):
        parse_range(text)


def test_pep440_round_trip() -> None:
    assert to_pep440("1.2.0-rc.1") == "1.2.0rc1"
    assert to_pep440("1.2.0-alpha.3") == "1.2.0a3"
    assert to_pep440("1.2.0") == "1.2.0"
    assert str(from_pep440("1.2.0rc1")) == "1.2.0-rc.1"
    assert str(from_pep440("2.0.0b2.dev1")) == "2.0.0-beta.2.dev.1"
    with pytest.raises(InvalidVersion):
        to_pep440("1.0.0-snapshot")
    with pytest.raises(InvalidVersion):
        from_pep440("1.0")
