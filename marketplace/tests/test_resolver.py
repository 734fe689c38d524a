from __future__ import annotations

import uuid

import pytest

from apt_marketplace.resolver import MemoryCatalogue, ReleaseInfo, ResolutionError, resolve


def R(name: str, version: str, requires: dict[str, str] | None = None, core: str = "^2.0", yanked: bool = False) -> ReleaseInfo:
    return ReleaseInfo(name, version, requires or {}, core, yanked)


CATALOGUE = MemoryCatalogue(
    [
        R("moe", "1.0.0", {"tva": "^1.0"}),
        R("moe", "1.1.0", {"tva": "^1.2"}),
        R("moe", "2.0.0-rc.1", {"tva": "^2.0"}),
        R("tva", "1.0.0"),
        R("tva", "1.2.0"),
        R("tva", "1.3.0", yanked=True),
        R("tva", "1.4.0", core="^3.0"),
        R("align", "1.0.0", {"tva": "~1.0"}),
        R("voter", "1.0.0", {"Align": "^1.0"}),
        R("voter", "1.1.0", {"align": "^1.0", "moe": "^1.1"}),
    ]
)


def test_picks_newest_compatible_and_orders_dependencies_first() -> None:
    result = resolve({"moe": "^1.0"}, CATALOGUE, "2.1.0")
    assert result.pins() == {"tva": "1.2.0", "moe": "1.1.0"}
    assert list(result.order) == ["tva", "moe"]


def test_core_version_filters_candidates() -> None:
    assert resolve({"tva": "*"}, CATALOGUE, "2.0.0").pins() == {"tva": "1.2.0"}
    assert resolve({"tva": "*"}, CATALOGUE, "3.0.0").pins() == {"tva": "1.4.0"}
    assert resolve({"tva": "*"}, CATALOGUE).pins() == {"tva": "1.4.0"}


def test_yanked_only_when_pinned_exactly() -> None:
    with pytest.raises(ResolutionError, match="1.3.0 is yanked"):
        resolve({"tva": "^1.3"}, CATALOGUE, "2.0.0")
    assert resolve({"tva": "=1.3.0"}, CATALOGUE, "2.0.0").pins() == {"tva": "1.3.0"}
    assert resolve({"tva": "1.3.0"}, CATALOGUE, "2.0.0").pins() == {"tva": "1.3.0"}


def test_prereleases_only_when_named() -> None:
    assert resolve({"moe": "*"}, CATALOGUE, "2.0.0").pins()["moe"] == "1.1.0"
    with pytest.raises(ResolutionError):
        resolve({"moe": "^2.0.0"}, CATALOGUE, "2.0.0")
    with pytest.raises(ResolutionError) as info:
        resolve({"moe": ">=2.0.0-rc.1"}, CATALOGUE, "2.0.0")
    assert "tva" in info.value.conflicts


def test_backtracks_to_older_release() -> None:
    result = resolve({"voter": "*", "align": "*"}, CATALOGUE, "2.0.0")
    assert result.pins() == {"tva": "1.0.0", "align": "1.0.0", "voter": "1.0.0"}


def test_conflict_explanation_walks_the_chain() -> None:
    with pytest.raises(ResolutionError) as info:
        resolve({"voter": "1.1.0", "tva": "^1.2"}, CATALOGUE, "2.0.0")
    text = info.value.explanation
    assert "you requested voter 1.1.0 and voter 1.1.0 requires align ^1.0 and align 1.0.0 requires tva ~1.0" in text
    assert "you requested tva ^1.2" in text
    assert "tva has versions 1.0.0, 1.2.0 (1.3.0 is yanked; 1.4.0 needs apt-core ^3.0 but the core is 2.0.0)" in text
    assert "the requirements are unsatisfiable" in text
    assert info.value.conflicts == ["tva"]


def test_unknown_package_and_bad_input() -> None:
    with pytest.raises(ResolutionError, match="nothing-here is not in the marketplace"):
        resolve({"nothing-here": "^1"}, CATALOGUE)
    with pytest.raises(ValueError, match="requirement tva"):
        resolve({"tva": "^^1"}, CATALOGUE)
    with pytest.raises(ValueError, match="core version"):
        resolve({"tva": "^1"}, CATALOGUE, "2")


def test_resolve_endpoint(server, make_apx) -> None:
    tag = uuid.uuid4().hex[:6]
    base, mid, top = (f"apt-plugin-{tag}-{s}" for s in ("base", "mid", "top"))
    token = server.key(base, mid, top)
    with server.client(token) as c:
        for archive in (
            make_apx(base, "1.0.0"),
            make_apx(base, "1.5.0"),
            make_apx(base, "2.0.0", core="^3.0"),
            make_apx(mid, "1.0.0", requires={base: "^1.2"}),
            make_apx(top, "1.0.0", requires={mid: "^1.0", base: "<1.5.0"}),
        ):
            assert c.post("/api/v1/publish", content=archive.read_bytes()).status_code == 201
        ok = c.post("/api/v1/resolve", json={"requirements": {mid: "^1"}, "core": "2.3.0"})
        assert ok.status_code == 200, ok.text
        body = ok.json()
        assert body["pins"] == {base: "1.5.0", mid: "1.0.0"}
        assert [p["name"] for p in body["packages"]] == [base, mid]
        assert body["packages"][0]["download_url"].endswith(f"/{base}/1.5.0/download")
        newest = c.post("/api/v1/resolve", json={"requirements": {base: "*"}, "core": "3.0.0"}).json()
        assert newest["pins"] == {base: "2.0.0"}
        bad = c.post("/api/v1/resolve", json={"requirements": {top: "*"}, "core": "2.3.0"})
        assert bad.status_code == 409
        err = bad.json()
        assert err["error"] == "resolution_impossible"
        assert f"you requested {top} * and {top} 1.0.0 requires {mid} ^1.0 and {mid} 1.0.0 requires {base} ^1.2" in err["detail"]
        assert f"{top} 1.0.0 requires {base} <1.5.0" in err["detail"]
