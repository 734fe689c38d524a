from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from apt_marketplace.server.models import ApiKey


def _publish(client: httpx.Client, archive: Path) -> httpx.Response:
    return client.post("/api/v1/publish", content=archive.read_bytes(), headers={"Content-Type": "application/octet-stream"})


def _assert_error(resp: httpx.Response, status: int, code: str) -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error", "detail"} and body["error"] == code and body["detail"]
    return body


def test_publish_then_read_back(server, make_apx, unique_name: str) -> None:
    archive = make_apx(unique_name, "1.0.0", requires={"apt-plugin-base": "^1.0"}, summary="Tri-vein fast attention")
    with server.client(server.key(unique_name)) as c:
        resp = _publish(c, archive)
        assert resp.status_code == 201, resp.text
        body = resp.json()
        assert body["created"] is True
        assert body["sha256"] == hashlib.sha256(archive.read_bytes()).hexdigest()
        assert body["requires"] == {"apt-plugin-base": "^1.0"}
        pkg = c.get(f"/api/v1/packages/{unique_name.upper()}").json()
        assert pkg["name"] == unique_name and pkg["latest"] == "1.0.0"
        rel = c.get(f"/api/v1/packages/{unique_name}/1.0.0").json()
        assert rel["manifest"]["provides"] == ["attention.fake"]
        assert rel["files"][0]["filename"].endswith("-py3-none-any.whl")
        dl = c.get(rel["download_url"])
        assert dl.status_code == 200 and dl.content == archive.read_bytes()
        assert dl.headers["x-apx-sha256"] == body["sha256"]
        assert c.get(f"/api/v1/packages/{unique_name}").json()["downloads"] == 1


def test_identical_republish_is_noop_and_different_is_conflict(server, make_apx, unique_name: str) -> None:
    first = make_apx(unique_name, "2.0.0")
    other = make_apx(unique_name, "2.0.0", summary="changed")
    with server.client(server.key(unique_name)) as c:
        assert _publish(c, first).status_code == 201
        again = _publish(c, first)
        assert again.status_code == 200 and again.json()["created"] is False
        _assert_error(_publish(c, other), 409, "version_exists")
        assert _publish(c, make_apx(unique_name, "2.0.0+build.7", summary="other")).status_code == 409


def test_auth_failures(server, make_apx, unique_name: str) -> None:
    archive = make_apx(unique_name)
    with server.client() as anon:
        body = _assert_error(_publish(anon, archive), 401, "unauthorized")
        assert "Bearer" in body["detail"]
    with server.client("aptm_000000000000_wrong") as bad:
        _assert_error(_publish(bad, archive), 401, "unauthorized")
    with server.client("not-a-key") as bad:
        _assert_error(_publish(bad, archive), 401, "unauthorized")
    with server.client(server.key("apt-plugin-somebody-else")) as other:
        _assert_error(_publish(other, archive), 403, "forbidden")
        assert other.get(f"/api/v1/packages/{unique_name}").status_code == 404


def test_tokens_are_stored_only_as_hashes(server, unique_name: str) -> None:
    token = server.key(unique_name, label="hash-check")
    with server.catalog.db.read() as s:
        keys = s.scalars(select(ApiKey)).all()
        stored = [(k.key_id, k.key_hash, k.label) for k in keys]
    assert all(token not in " ".join(row) for row in stored)
    assert hashlib.sha256(token.encode()).hexdigest() in {h for _, h, _ in stored}


def test_yank_and_unyank(server, make_apx, unique_name: str) -> None:
    with server.client(server.key(unique_name)) as c:
        assert _publish(c, make_apx(unique_name, "1.0.0")).status_code == 201
        assert _publish(c, make_apx(unique_name, "1.1.0")).status_code == 201
        resp = c.post(f"/api/v1/packages/{unique_name}/1.1.0/yank", json={"reason": "broken <script> & co"})
        assert resp.status_code == 200 and resp.json()["yanked"] is True
        pkg = c.get(f"/api/v1/packages/{unique_name}").json()
        assert pkg["latest"] == "1.0.0"
        assert pkg["releases"][0]["yank_reason"] == "broken <script> & co"
        assert c.post(f"/api/v1/packages/{unique_name}/1.1.0/unyank").json()["yanked"] is False
        _assert_error(c.post(f"/api/v1/packages/{unique_name}/9.9.9/yank", json={}), 404, "not_found")
    with server.client(server.key("apt-plugin-stranger")) as other:
        _assert_error(other.post(f"/api/v1/packages/{unique_name}/1.0.0/yank", json={"reason": "x"}), 403, "forbidden")
    with server.client() as anon:
        _assert_error(anon.post(f"/api/v1/packages/{unique_name}/1.0.0/unyank"), 401, "unauthorized")


def test_deleted_version_can_never_be_reused(server, make_apx, unique_name: str) -> None:
    archive = make_apx(unique_name, "3.0.0")
    with server.client(server.key(unique_name)) as c:
        assert _publish(c, archive).status_code == 201
        assert c.delete(f"/api/v1/packages/{unique_name}/3.0.0").json()["deleted"] is True
        _assert_error(c.get(f"/api/v1/packages/{unique_name}/3.0.0"), 404, "not_found")
        _assert_error(_publish(c, archive), 409, "version_deleted")
        assert _publish(c, make_apx(unique_name, "3.0.1")).status_code == 201


def test_parallel_identical_publishes(server, make_apx, unique_name: str) -> None:
    archive = make_apx(unique_name, "1.0.0").read_bytes()
    token = server.key(unique_name)

    def send(_: int) -> int:
        with server.client(token) as c:
            return c.post("/api/v1/publish", content=archive).status_code

    with ThreadPoolExecutor(20) as pool:
        codes = sorted(pool.map(send, range(20)))
    assert codes == [200] * 19 + [201]
    sha = hashlib.sha256(archive).hexdigest()
    assert server.catalog.blobs.path(sha).is_file()


def test_parallel_different_publishes(server, make_apx, unique_name: str) -> None:
    archives = [make_apx(unique_name, "1.0.0", summary=f"variant {i}").read_bytes() for i in range(20)]
    token = server.key(unique_name)
    blob_root = server.catalog.blobs.root
    before = {p.name for p in blob_root.rglob("*") if p.is_file() and p.relative_to(blob_root).parts[0] != "tmp"}

    def send(body: bytes) -> int:
        with server.client(token) as c:
            return c.post("/api/v1/publish", content=body).status_code

    with ThreadPoolExecutor(20) as pool:
        codes = sorted(pool.map(send, archives))
    assert codes == [201] + [409] * 19
    after = {p.name for p in blob_root.rglob("*") if p.is_file() and p.relative_to(blob_root).parts[0] != "tmp"}
    shas = {hashlib.sha256(a).hexdigest() for a in archives}
    assert len((after - before) & shas) == 1
    assert not list((blob_root / "tmp").iterdir())


def test_upload_cap_and_bad_archives(server, unique_name: str, tmp_path: Path) -> None:
    with server.client(server.key(unique_name)) as c:
        _assert_error(c.post("/api/v1/publish", content=b"x" * (5 << 20)), 413, "too_large")

        def chunks():
            for _ in range(5):
                yield b"y" * (1 << 20)

        _assert_error(c.post("/api/v1/publish", content=chunks()), 413, "too_large")
        body = _assert_error(c.post("/api/v1/publish", content=b"PK\x03\x04garbage"), 400, "invalid_archive")
        assert "zip" in body["detail"]
        _assert_error(c.post("/api/v1/publish", content=b""), 400, "invalid_archive")
    assert not list((server.catalog.blobs.root / "tmp").iterdir())


def test_hostile_archive_rejected_over_http(server, unique_name: str) -> None:
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("apx.json", "{}")
        zf.writestr("../../etc/cron.d/evil", "boom")
    with server.client(server.key(unique_name)) as c:
        body = _assert_error(c.post("/api/v1/publish", content=buf.getvalue()), 400, "invalid_archive")
        assert "outside the archive root" in body["detail"]


def test_search_kind_and_sorting(server, make_apx) -> None:
    import uuid

    tag = uuid.uuid4().hex[:6]
    names = [f"apt-plugin-{tag}-{suffix}" for suffix in ("alpha", "beta", "gamma")]
    token = server.key(*names)
    with server.client(token) as c:
        assert _publish(c, make_apx(names[0], provides=("router.topk_moe",), summary=f"mixture of experts {tag}")).status_code == 201
        assert _publish(c, make_apx(names[1], provides=("attention.tva",), summary=f"tri vein {tag}")).status_code == 201
        assert _publish(c, make_apx(names[2], provides=("attention.flash_v2",), summary=f"flash {tag}")).status_code == 201
        for _ in range(3):
            c.get(f"/api/v1/packages/{names[2]}/1.0.0/download")
        c.put(f"/api/v1/packages/{names[1]}/ratings", json={"score": 5})
        hits = c.get("/api/v1/search", params={"q": tag}).json()
        assert hits["total"] == 3
        by_kind = c.get("/api/v1/search", params={"q": tag, "kind": "attention"}).json()["results"]
        assert [h["name"] for h in by_kind] == [names[2], names[1]]
        assert c.get("/api/v1/search", params={"q": tag, "sort": "downloads"}).json()["results"][0]["name"] == names[2]
        assert c.get("/api/v1/search", params={"q": tag, "sort": "rating"}).json()["results"][0]["name"] == names[1]
        assert c.get("/api/v1/search", params={"q": f"{tag}-alpha"}).json()["results"][0]["name"] == names[0]
        assert c.get("/api/v1/search", params={"q": "topk_moe"}).json()["total"] >= 1
        _assert_error(c.get("/api/v1/search", params={"sort": "nonsense"}), 422, "invalid_request")
        assert c.get("/api/v1/search", params={"q": "%_%"}).status_code == 200


def test_ratings_one_per_key(server, make_apx, unique_name: str) -> None:
    with server.client(server.key(unique_name)) as c:
        assert _publish(c, make_apx(unique_name)).status_code == 201
        c.put(f"/api/v1/packages/{unique_name}/ratings", json={"score": 2})
        c.put(f"/api/v1/packages/{unique_name}/ratings", json={"score": 4})
    with server.client(server.key("apt-plugin-rater")) as r:
        out = r.put(f"/api/v1/packages/{unique_name}/ratings", json={"score": 5}).json()
    assert out["count"] == 2 and out["average"] == 4.5 and out["histogram"]["4"] == 1
    with server.client() as anon:
        _assert_error(anon.put(f"/api/v1/packages/{unique_name}/ratings", json={"score": 5}), 401, "unauthorized")
        _assert_error(anon.get("/api/v1/packages/apt-plugin-nope/ratings"), 404, "not_found")
    with server.client(server.key("apt-plugin-rater")) as r:
        _assert_error(r.put(f"/api/v1/packages/{unique_name}/ratings", json={"score": 6}), 422, "invalid_request")


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/api/v1/packages/does-not-exist", 404, "not_found"),
        ("GET", "/api/v1/packages/does-not-exist/1.0.0", 404, "not_found"),
        ("GET", "/api/v1/packages/x/not-semver", 404, "not_found"),
        ("GET", "/api/v1/nowhere", 404, "not_found"),
        ("DELETE", "/api/v1/search", 405, "method_not_allowed"),
        ("GET", "/api/v1/search?limit=0", 422, "invalid_request"),
        ("GET", "/api/v1/packages/%2e%2e", 422, "invalid_request"),
    ],
)
def test_errors_are_json(server, method: str, path: str, status: int, code: str) -> None:
    with server.client() as c:
        _assert_error(c.request(method, path), status, code)


def test_resolve_endpoint_body_validation(server) -> None:
    with server.client() as c:
        _assert_error(c.post("/api/v1/resolve", content=b"{not json"), 422, "invalid_request")
        _assert_error(c.post("/api/v1/resolve", json={"requirements": {"a": "^^"}}), 400, "invalid_requirement")
        _assert_error(c.post("/api/v1/resolve", json={"requirements": {}, "core": "2"}), 422, "invalid_request")


def test_openapi_published(server) -> None:
    with server.client() as c:
        schema = c.get("/openapi.json").json()
    assert "/api/v1/publish" in schema["paths"]
    assert "/api/v1/resolve" in schema["paths"]
    assert "ErrorOut" in schema["components"]["schemas"]
