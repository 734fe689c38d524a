from __future__ import annotations

import hashlib
import html
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from apt_marketplace.apx.pack import pack

JSON_V1 = "application/vnd.pypi.simple.v1+json"
PIP_ACCEPT = f"{JSON_V1}, application/vnd.pypi.simple.v1+html; q=0.1, text/html; q=0.01"


@pytest.fixture(scope="module")
def published(server, plugin_project, tmp_path_factory) -> dict:
    """One project with a real hatchling-built 1.0.0 and a yanked 1.1.0."""
    import uuid

    name = f"apt-plugin-idx{uuid.uuid4().hex[:8]}"
    out = tmp_path_factory.mktemp("idx")
    token = server.key(name)
    archives = {}
    for version in ("1.0.0", "1.1.0"):
        archives[version] = pack(plugin_project(name, version), out, build_isolation=False)
    with server.client(token) as c:
        for archive in archives.values():
            assert c.post("/api/v1/publish", content=archive.read_bytes()).status_code == 201
        reason = 'breaks "fast" path <b>&'
        assert c.post(f"/api/v1/packages/{name}/1.1.0/yank", json={"reason": reason}).status_code == 200
    return {"name": name, "reason": reason}


def _venv(tmp_path: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "venv")], check=True)
    return tmp_path / "venv" / "bin" / "python"


def _installed(venv_python: Path) -> dict[str, str]:
    out = subprocess.run(
        [str(venv_python), "-c", "import importlib.metadata as m, json; print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))"],
        check=True, capture_output=True, text=True,
    ).stdout
    import json

    return json.loads(out)


def test_pip_installs_from_simple_index(server, published, tmp_path: Path) -> None:
    venv_python = _venv(tmp_path)
    name = published["name"]
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "--isolated", "--python", str(venv_python), "install", "--no-deps",
         "--no-cache-dir", "--index-url", f"{server.url}/simple/", name.upper().replace("-", "_")],
        capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _installed(venv_python)[name] == "1.0.0"
    check = subprocess.run([str(venv_python), "-c", "from fake_plugin.provider import FakeProvider; print(FakeProvider.kind)"], capture_output=True, text=True)
    assert check.stdout.strip() == "attention"
    pinned = subprocess.run(
        [sys.executable, "-m", "pip", "--isolated", "--python", str(venv_python), "install", "--no-deps",
         "--no-cache-dir", "--index-url", f"{server.url}/simple/", f"{name}==1.1.0"],
        capture_output=True, text=True, timeout=180,
    )
    assert pinned.returncode == 0, pinned.stderr
    assert "yanked" in (pinned.stdout + pinned.stderr).lower()
    assert _installed(venv_python)[name] == "1.1.0"


def _uv() -> str | None:
    local = Path(sys.executable).parent / "uv"
    return str(local) if local.exists() else shutil.which("uv")


@pytest.mark.skipif(_uv() is None, reason="uv is not installed")
def test_uv_installs_from_simple_index(server, published, tmp_path: Path) -> None:
    venv_python = _venv(tmp_path)
    proc = subprocess.run(
        [_uv(), "pip", "install", "--no-config", "--no-cache", "--python", str(venv_python), "--no-deps",
         "--index-url", f"{server.url}/simple/", published["name"]],
        capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _installed(venv_python)[published["name"]] == "1.0.0"


def test_json_detail_page(server, published) -> None:
    name = published["name"]
    with httpx.Client(base_url=server.url) as c:
        resp = c.get(f"/simple/{name}/", headers={"Accept": PIP_ACCEPT})
        assert resp.status_code == 200
        assert resp.headers["content-type"] == JSON_V1
        assert resp.headers["vary"] == "Accept"
        data = resp.json()
        assert data["meta"]["api-version"] == "1.1"
        assert data["name"] == name and data["versions"] == ["1.0.0", "1.1.0"]
        files = {f["filename"]: f for f in data["files"]}
        assert len(files) == 2
        good = next(f for f in files.values() if "1.0.0" in f["filename"])
        bad = next(f for f in files.values() if "1.1.0" in f["filename"])
        assert good["yanked"] is False and bad["yanked"] == published["reason"]
        wheel = c.get(good["url"])
        assert wheel.status_code == 200
        assert hashlib.sha256(wheel.content).hexdigest() == good["hashes"]["sha256"]
        assert len(wheel.content) == good["size"]
        meta = c.get(good["url"] + ".metadata")
        assert hashlib.sha256(meta.content).hexdigest() == good["core-metadata"]["sha256"] == good["dist-info-metadata"]["sha256"]
        assert b"Requires-Dist: apt-core" in meta.content
        assert good["requires-python"] == ">=3.8"
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", good["upload-time"])


def test_html_detail_page(server, published) -> None:
    name = published["name"]
    with httpx.Client(base_url=server.url) as c:
        for accept in (None, "text/html", "*/*"):
            resp = c.get(f"/simple/{name}/", headers={"Accept": accept} if accept else {})
            assert resp.headers["content-type"].startswith("text/html")
            assert resp.headers["vary"] == "Accept"
        page = resp.text
        assert '<meta name="pypi:repository-version" content="1.1">' in page
        anchors = re.findall(r"<a ([^>]*)>([^<]*)</a>", page)
        assert len(anchors) == 2
        for attrs, _text in anchors:
            assert re.search(r'href="/files/[0-9a-f]{64}/[^"#]+#sha256=[0-9a-f]{64}"', attrs)
            assert 'data-core-metadata="sha256=' in attrs and 'data-dist-info-metadata="sha256=' in attrs
            assert 'data-requires-python="&gt;=3.8"' in attrs
        assert f'data-yanked="{html.escape(published["reason"])}"' in page
        assert "<b>" not in page
        v1 = c.get(f"/simple/{name}/", headers={"Accept": "application/vnd.pypi.simple.v1+html"})
        assert v1.headers["content-type"] == "application/vnd.pypi.simple.v1+html"


def test_project_list_and_redirects(server, published) -> None:
    name = published["name"]
    with httpx.Client(base_url=server.url) as c:
        listing = c.get("/simple/", headers={"Accept": JSON_V1}).json()
        assert {"name": name} in listing["projects"]
        assert f'href="/simple/{name}/"' in c.get("/simple/").text
        for path in (f"/simple/{name}", f"/simple/{name.upper()}/", f"/simple/{name.replace('-', '_')}", "/simple"):
            resp = c.get(path)
            assert resp.status_code == 301, path
        assert c.get(f"/simple/{name.upper()}/").headers["location"] == f"/simple/{name}/"
        missing = c.get("/simple/apt-plugin-does-not-exist/")
        assert missing.status_code == 404 and missing.json()["error"] == "not_found"
        refused = c.get(f"/simple/{name}/", headers={"Accept": "application/xml"})
        assert refused.status_code == 406 and refused.json()["error"] == "not_acceptable"
        assert c.get(f"/files/{'0' * 64}/x.whl").status_code == 404


def test_metadata_is_announced_only_for_wheels_worth_it(tmp_path: Path, make_apx) -> None:
    """Small wheels: pip downloads them whole instead of fetching METADATA first (one request
    fewer per package); the .metadata file is still served to whoever asks."""
    from fastapi.testclient import TestClient

    from apt_marketplace.server.app import create_app
    from apt_marketplace.server.settings import Settings

    app = create_app(Settings(data_dir=tmp_path / "data", checks="off"))
    token = app.state.keys.create(["apt-plugin-small"]).token
    with TestClient(app) as c:
        body = make_apx("apt-plugin-small").read_bytes()
        assert c.post("/api/v1/publish", content=body, headers={"Authorization": f"Bearer {token}"}).status_code == 201
        [entry] = c.get("/simple/apt-plugin-small/", headers={"Accept": PIP_ACCEPT}).json()["files"]
        assert "core-metadata" not in entry and "dist-info-metadata" not in entry
        assert "data-core-metadata" not in c.get("/simple/apt-plugin-small/").text
        meta = c.get(entry["url"] + ".metadata")
        assert meta.status_code == 200 and b"Name: apt-plugin-small" in meta.content
