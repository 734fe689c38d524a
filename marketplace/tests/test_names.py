"""Names from the attacker's side: a second spelling of someone else's project, Unicode
look-alikes, non-ASCII digits in versions, and typosquats of another owner's project."""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest

from apt_marketplace.apx.names import closest_clash, name_problem, skeleton


def _publish(c, body: bytes):
    return c.post("/api/v1/publish", content=body)


def test_another_spelling_of_an_existing_project_belongs_to_its_owner(server, make_apx, json_error) -> None:
    tag = uuid.uuid4().hex[:8]
    name = f"apt-plugin-own{tag}"
    with server.client(server.key(name)) as owner:
        assert _publish(owner, make_apx(name, "1.0.0").read_bytes()).status_code == 201
    created = server.keys.create([name.replace("-", "_")], "newcomer")
    assert any("normalises to the existing project" in w for w in created.warnings)
    assert any("belongs to owner" in w for w in created.warnings)
    hijack = make_apx(name.replace("-", "_"), "9.0.0", summary="hijacked")
    with server.client(created.token) as attacker:
        detail = json_error(_publish(attacker, hijack.read_bytes()), 403, "not_owner")
        assert "belongs to owner" in detail and "--owner" in detail
        pkg = attacker.get(f"/api/v1/packages/{name.upper().replace('-', '.')}").json()
        assert [r["version"] for r in pkg["releases"]] == ["1.0.0"] and pkg["summary"] == "a test plugin"
        hits = attacker.get("/api/v1/search", params={"q": f"own{tag}"}).json()["results"]
        assert [(h["name"], h["version"]) for h in hits] == [(name, "1.0.0")]
        page = attacker.get(f"/simple/{name}/", headers={"Accept": "application/vnd.pypi.simple.v1+json"}).json()
        assert page["versions"] == ["1.0.0"]


def test_second_key_of_the_owner_warns_and_works(server, make_apx) -> None:
    name = f"apt-plugin-two{uuid.uuid4().hex[:8]}"
    first = server.keys.create([name], "first", owner=f"team-{name[-8:]}")
    second = server.keys.create([name], "second", owner=first.owner)
    assert any("already has 1 live key" in w and first.key_id in w for w in second.warnings)
    with server.client(second.token) as c:
        assert _publish(c, make_apx(name).read_bytes()).status_code == 201
    with server.client(first.token) as c:
        assert _publish(c, make_apx(name, "1.0.1").read_bytes()).status_code == 201


@pytest.mark.parametrize("name", ["apt-plugın-moe", "apt-plugin-moſ", "apt-plugin-\u212aoe", "apt-plugin-moe\n"])
def test_non_ascii_names_are_refused(server, raw_apx, wheel_factory, json_error, name: str) -> None:
    filename, wheel = wheel_factory("apt-plugin-moe", "1.0.0")
    with server.client(server.key("apt-plugin-moe-unicode-probe")) as c:
        detail = json_error(_publish(c, raw_apx({"name": name, "version": "1.0.0"}, {filename: wheel})), 400, "invalid_archive")
    assert "ASCII" in detail or "not a valid project name" in detail
    assert name_problem(name) is not None


def test_non_ascii_digits_in_versions_are_refused(server, raw_apx, wheel_factory, json_error, unique_name: str) -> None:
    filename, wheel = wheel_factory(unique_name, "10.0.0")
    with server.client(server.key(unique_name)) as c:
        for version in ("1\u0660.0.0", "1.0.0\n", "\uff11.0.0"):
            detail = json_error(_publish(c, raw_apx({"name": unique_name, "version": version}, {filename: wheel})), 400)
            assert "version" in detail
        json_error(c.get(f"/api/v1/packages/{unique_name}/1\u0660.0.0"), 422, "invalid_request")
        assert c.get(f"/simple/{unique_name}/").status_code == 404


def test_look_alike_of_another_owners_project_is_held_for_review(server, make_apx, tmp_path) -> None:
    tag = uuid.uuid4().hex[:6]
    original = f"apt-plugin-{tag}-modern"
    typo = f"apt-plugin-{tag}-modem"
    skeleton_twin = f"apt-plugin-{tag}-rnodern"
    with server.client(server.key(original)) as c:
        assert _publish(c, make_apx(original).read_bytes()).status_code == 201
    for squat in (typo, skeleton_twin):
        with server.client(server.key(squat)) as c:
            resp = _publish(c, make_apx(squat).read_bytes())
            assert resp.status_code == 202, resp.text
            body = resp.json()
            assert body["status"] == "held" and original in body["status_reason"] and "apt market review" in body["status_reason"]
            assert c.get(f"/api/v1/packages/{squat}").status_code == 200  # the owner's key sees it
        with server.client() as anon:
            assert anon.get(f"/api/v1/packages/{squat}").status_code == 404
            assert anon.get(f"/simple/{squat}/").status_code == 404
            assert squat not in anon.get("/simple/", headers={"Accept": "application/vnd.pypi.simple.v1+json"}).text
            assert all(h["name"] != squat for h in anon.get("/api/v1/search", params={"q": tag}).json()["results"])
            assert anon.post("/api/v1/resolve", json={"requirements": {squat: "*"}}).status_code == 409
    db = ["--database-url", server.settings.database_url] if server.settings.database_url else ["--data-dir", str(server.settings.data_dir)]

    def market(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "apt_marketplace", *args, *db], capture_output=True, text=True, timeout=120)

    listed = market("review")
    assert listed.returncode == 0 and typo in listed.stdout and skeleton_twin in listed.stdout and original in listed.stdout
    assert market("review", "--approve", typo, "--checks", "off").returncode == 0
    assert market("review", "--reject", skeleton_twin).returncode == 0
    refused = market("review", "--approve", original)
    assert refused.returncode == 2 and "not held for review" in refused.stderr
    with server.client() as anon:
        assert anon.get(f"/simple/{typo}/").status_code == 200
        assert anon.get(f"/simple/{skeleton_twin}/").status_code == 404
    with server.client(server.key(skeleton_twin)) as c:
        resp = _publish(c, make_apx(skeleton_twin, "1.0.1").read_bytes())
        assert resp.status_code == 403 and resp.json()["error"] in ("name_rejected", "not_owner")


def test_name_rules_in_isolation() -> None:
    assert skeleton("apt-plugin-rnoe") == skeleton("apt_plugin.moe")
    assert closest_clash("apt-plugin-mod", ["apt-plugin-moe"]) == "apt-plugin-moe"
    assert closest_clash("apt-plugin-tva", ["apt-plugin-moe", "apt-plugin-flash"]) is None
    assert closest_clash("apt-plugin-moe", ["apt-plugin-moe"]) is None
    assert name_problem("a" * 101) is not None and name_problem("-x") is not None and name_problem("x") is None
