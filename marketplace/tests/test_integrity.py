from __future__ import annotations

import importlib.metadata
import os

import pytest
from sqlalchemy import func, inspect, select

from apt_marketplace.apx.signing import generate_signing_key, public_key_text
from apt_marketplace.server.models import Package, Release


def _count(server, model, name: str) -> int:
    with server.catalog.db.read() as s:
        if model is Package:
            return s.scalar(select(func.count()).select_from(Package).where(Package.name == name))
        return s.scalar(select(func.count()).select_from(Release).join(Package).where(Package.name == name))


def test_rejected_uploads_leave_no_rows_or_files(server, make_apx, unique_name: str) -> None:
    tmp_dir = server.catalog.blobs.tmp
    with server.client(server.key("apt-plugin-not-this-one")) as c:
        assert c.post("/api/v1/publish", content=make_apx(unique_name).read_bytes()).status_code == 403
    with server.client(server.key(unique_name)) as c:
        assert c.post("/api/v1/publish", content=b"not a zip at all").status_code == 400
    assert _count(server, Package, unique_name) == 0
    assert not list(tmp_dir.iterdir())


def test_storage_failure_commits_nothing(server, make_apx, unique_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = make_apx(unique_name)

    def broken_adopt(spool, sha):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(server.catalog.blobs, "adopt", broken_adopt)
    with server.client(server.key(unique_name)) as c:
        resp = c.post("/api/v1/publish", content=archive.read_bytes())
        assert resp.status_code == 500 and resp.json()["error"] == "internal"
        assert _count(server, Release, unique_name) == 0
        assert _count(server, Package, unique_name) == 0
        monkeypatch.undo()
        assert c.post("/api/v1/publish", content=archive.read_bytes()).status_code == 201
    assert not list(server.catalog.blobs.tmp.iterdir())


def test_publisher_key_requires_signed_archives(server, make_apx, unique_name: str) -> None:
    key = generate_signing_key()
    server.keys.set_publisher_key(unique_name, public_key_text(key))
    with server.client(server.key(unique_name)) as c:
        unsigned = c.post("/api/v1/publish", content=make_apx(unique_name, "1.0.0").read_bytes())
        assert unsigned.status_code == 403 and unsigned.json()["error"] == "invalid_signature"
        forged = c.post("/api/v1/publish", content=make_apx(unique_name, "1.0.0", signing_key=generate_signing_key()).read_bytes())
        assert forged.status_code == 403 and "does not verify" in forged.json()["detail"]
        signed = c.post("/api/v1/publish", content=make_apx(unique_name, "1.0.0", signing_key=key).read_bytes())
        assert signed.status_code == 201 and signed.json()["signed"] is True
        assert c.get(f"/api/v1/packages/{unique_name}").json()["signed_by_publisher_key"] is True


def test_apt_command_entry_point_is_registered() -> None:
    eps = importlib.metadata.entry_points(group="apt.commands")
    market = [ep for ep in eps if ep.name == "market"]
    assert market and market[0].value == "apt_marketplace.cli:main"
    assert market[0].load()(["--help"]) == 0


@pytest.mark.postgres
@pytest.mark.skipif(not os.environ.get("APT_TEST_DATABASE_URL"), reason="APT_TEST_DATABASE_URL is not set")
def test_runs_on_postgresql(server) -> None:
    engine = server.catalog.db.engine
    assert engine.dialect.name == "postgresql"
    tables = set(inspect(engine).get_table_names())
    assert {"packages", "releases", "deleted_versions", "api_keys", "ratings"} <= tables


def test_app_from_env_uses_apt_home(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    from apt_marketplace.server.app import app_from_env

    for var in ("APT_MARKET_DATA_DIR", "APT_MARKET_DATABASE_URL", "APT_MARKET_MAX_UPLOAD_BYTES"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("APT_HOME", str(tmp_path))
    monkeypatch.setenv("APT_MARKET_MAX_UPLOAD_BYTES", "10")
    app = app_from_env()
    assert (tmp_path / "market-server" / "market.db").is_file()
    assert app.state.settings.max_upload_bytes == 10
    assert app.state.catalog.search("", None, "name", 10, 0) == {"total": 0, "results": []}
    app.state.catalog.db.dispose()
