"""Every text that reaches the database is bounded and NUL-free before it gets there, on
SQLite (which would store anything) and PostgreSQL (which refuses NUL and enforces widths)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest


def _publish(c, body: bytes):
    return c.post("/api/v1/publish", content=body)


def test_a_long_key_label_does_not_break_publishing(server, make_apx, unique_name: str) -> None:
    token = server.key(unique_name, label="L" * 200)
    with server.client(token) as c:
        assert _publish(c, make_apx(unique_name).read_bytes()).status_code == 201
    with pytest.raises(ValueError, match="at most 200"):
        server.keys.create([unique_name], "L" * 201)
    with pytest.raises(ValueError, match="NUL"):
        server.keys.create([unique_name], "a\x00b")


@pytest.mark.parametrize(
    ("field", "manifest", "needle"),
    [
        ("version", {"version": "1.0.0-" + "a" * 300}, "version"),
        ("provides kind", {"provides": ["k" * 100 + ".x"]}, "64 characters"),
        ("provides NUL", {"provides": ["attention.f\x00"]}, "provides"),
        ("Requires-Python", {"python": ">=3." + "1" * 200}, "python"),
        ("python NUL", {"python": ">=3.8\x00"}, "python"),
        ("summary NUL", {"summary": "nice\x00plugin"}, "NUL"),
        ("core", {"core": "^" + "1" * 300}, "core"),
        ("requires range", {"requires": {"apt-plugin-x": "^1" + ".0" * 200}}, "requires"),
    ],
)
def test_oversized_or_nul_manifest_fields_are_400(server, raw_apx, wheel_factory, json_error, unique_name, field, manifest, needle) -> None:
    filename, wheel = wheel_factory(unique_name, "1.0.0")
    doc = {"name": unique_name, "version": "1.0.0", **manifest}
    with server.client(server.key(unique_name)) as c:
        detail = json_error(_publish(c, raw_apx(doc, {filename: wheel})), 400, "invalid_archive")
    assert needle in detail, (field, detail)


@pytest.mark.parametrize("what", ["requires-python", "build-tag"])
def test_oversized_wheel_fields_are_400(server, raw_apx, wheel_factory, json_error, unique_name, what: str) -> None:
    if what == "requires-python":
        filename, wheel = wheel_factory(unique_name, "1.0.0", requires_python=">=3." + "9" * 150)
    else:
        filename, wheel = wheel_factory(unique_name, "1.0.0", build_tag="1" + "b" * 240)
    with server.client(server.key(unique_name)) as c:
        detail = json_error(_publish(c, raw_apx({"name": unique_name, "version": "1.0.0"}, {filename: wheel})), 400, "invalid_archive")
    assert ("Requires-Python" in detail) if what == "requires-python" else ("200" in detail)


def test_nul_bytes_in_queries_and_bodies_are_4xx(server, make_apx, json_error, unique_name: str) -> None:
    with server.client(server.key(unique_name)) as c:
        assert _publish(c, make_apx(unique_name).read_bytes()).status_code == 201
        json_error(c.get("/api/v1/search", params={"q": "\x00"}), 422, "invalid_request")
        json_error(c.get("/api/v1/search?q=%00"), 422, "invalid_request")
        json_error(c.get("/api/v1/search", params={"q": "x" * 201}), 422, "invalid_request")
        json_error(c.post(f"/api/v1/packages/{unique_name}/1.0.0/yank", json={"reason": "bad\u0000"}), 422, "invalid_request")
        json_error(c.post(f"/api/v1/packages/{unique_name}/1.0.0/yank", json={"reason": "r" * 1001}), 422, "invalid_request")
        json_error(c.post("/api/v1/resolve", json={"requirements": {unique_name: "^1\x00"}}), 422, "invalid_request")
        json_error(c.post("/api/v1/resolve", json={"requirements": {"a\x00": "*"}}), 422, "invalid_request")
        json_error(c.get(f"/api/v1/packages/{unique_name}/1.0.0%00"), 422, "invalid_request")
        json_error(c.post(f"/api/v1/packages/{unique_name}/1.0.0/yank", content=b"\xff\xfe{"), 422, "invalid_request")
        assert c.get(f"/api/v1/packages/{unique_name}").json()["releases"][0]["yanked"] is False


def test_deeply_nested_json_is_4xx_not_a_recursion_error(server, raw_apx, wheel_factory, json_error, unique_name: str) -> None:
    import hashlib
    import io
    import zipfile

    filename, wheel = wheel_factory(unique_name, "1.0.0")
    deep = "[" * 100_000 + "]" * 100_000
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("apx.json", '{"name": ' + deep + "}")
        zf.writestr(f"wheels/{filename}", wheel)
    assert hashlib.sha256(wheel).hexdigest()
    with server.client(server.key(unique_name)) as c:
        detail = json_error(_publish(c, buf.getvalue()), 400, "invalid_archive")
        assert "nests too deeply" in detail
        body = '{"requirements": {"a": ' + deep + "}}"
        resp = c.post("/api/v1/resolve", content=body, headers={"Content-Type": "application/json"})
        assert 400 <= resp.status_code < 500 and set(resp.json()) == {"error", "detail"}
        assert c.get("/api/v1/health").status_code == 200


def test_openapi_states_the_limits(server) -> None:
    with server.client() as c:
        schema = c.get("/openapi.json").json()
    params = {p["name"]: p["schema"] for p in schema["paths"]["/api/v1/search"]["get"]["parameters"]}
    assert params["q"]["maxLength"] == 200 and "x00" in params["q"]["pattern"]
    yank = schema["components"]["schemas"]["YankIn"]["properties"]["reason"]
    assert yank["maxLength"] == 1000 and "x00" in yank["pattern"]
    version = next(p for p in schema["paths"]["/api/v1/packages/{name}/{version}"]["get"]["parameters"] if p["name"] == "version")
    assert version["schema"]["maxLength"] == 256 and version["schema"]["pattern"]
    resolve = schema["components"]["schemas"]["ResolveIn"]["properties"]
    assert resolve["requirements"]["maxProperties"] == 64 and resolve["requirements"]["additionalProperties"] is False


#: What `--checks all` still reports, and why it stands: the schema can say that a publish body
#: is bytes and that a range is printable ASCII, not that the bytes are a valid archive or the
#: text a valid range, so schema-valid nonsense is rightly a 400.
DOCUMENTED = {("POST /api/v1/publish", "ST202"), ("POST /api/v1/resolve", "ST202")}


def test_schemathesis_checks_all(server, unique_name: str, tmp_path) -> None:
    """The schemathesis CLI with every check, bounded and deterministic, against this backend."""
    token = server.key(unique_name)
    cmd = [
        sys.executable, "-m", "schemathesis.cli", "run", f"{server.url}/openapi.json",
        "--checks", "all", "--max-examples", "10", "--generation-deterministic",
        "-H", f"Authorization: Bearer {token}", "--no-color",
    ]
    env = {**os.environ, "NO_COLOR": "1", "SCHEMATHESIS_HOOKS": ""}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=540, cwd=tmp_path, env=env)
    out = proc.stdout + proc.stderr
    assert "generated" in out, out[-3000:]
    found: set[tuple[str, str]] = set()
    operation = ""
    for line in out.splitlines():
        head = re.match(r"^_+ (\S+ \S+) _+$", line.strip())
        if head:
            operation = head[1]
        code = re.match(r"^- (ST\d+|Server error)", line.strip())
        if code:
            found.add((operation, code[1]))
    assert not [f for f in found if "Server error" in f[1] or f[1] == "ST100"], out[-4000:]
    assert found <= DOCUMENTED, (found - DOCUMENTED, out[-4000:])


def test_405_lists_every_method_of_the_path(server, json_error) -> None:
    with server.client() as c:
        resp = c.request("OPTIONS", "/api/v1/packages/apt-plugin-x/ratings")
        assert "GET, PUT" in json_error(resp, 405, "method_not_allowed") and resp.headers["allow"] == "GET, PUT"
        resp = c.request("PATCH", "/api/v1/packages/apt-plugin-x/1.0.0")
        json_error(resp, 405, "method_not_allowed")
        assert resp.headers["allow"] == "DELETE, GET"
