"""Crash leftovers: blobs that no row names and spool files of killed uploads are collected,
a deleted release frees its blobs, and an upload's scope is checked before any inflation."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

from apt_marketplace.apx.reader import read_apx
from apt_marketplace.server.settings import Settings

OLD = time.time() - 7200


def _stored(server) -> set[str]:
    root = server.catalog.blobs.root
    return {p.name for p in root.rglob("*") if p.is_file() and p.relative_to(root).parts[0] != "tmp"}


def test_deleting_a_release_frees_its_blobs(server, make_apx, unique_name: str) -> None:
    with server.client(server.key(unique_name)) as c:
        body = c.post("/api/v1/publish", content=make_apx(unique_name).read_bytes()).json()
        detail = c.get(f"/api/v1/packages/{unique_name}/1.0.0").json()
        wheel_sha = detail["files"][0]["sha256"]
        assert {body["sha256"], wheel_sha} <= _stored(server)
        assert c.delete(f"/api/v1/packages/{unique_name}/1.0.0").status_code == 200
    assert not {body["sha256"], wheel_sha} & _stored(server)


def test_gc_removes_orphans_and_stale_spool_but_nothing_in_use(server, make_apx, unique_name: str, tmp_path: Path) -> None:
    with server.client(server.key(unique_name)) as c:
        kept = c.post("/api/v1/publish", content=make_apx(unique_name).read_bytes()).json()["sha256"]
    blobs = server.catalog.blobs
    path = blobs.path(blobs.put(b"orphan of a killed upload"))
    os.utime(path, (OLD, OLD))
    young = blobs.path(blobs.put(b"blob of a publish still in flight"))
    stale = blobs.tmp / "upload-dead.tmp"
    stale.write_bytes(b"x" * 4096)
    os.utime(stale, (OLD, OLD))
    live = blobs.tmp / "upload-live.tmp"
    live.write_bytes(b"y")
    os.utime(blobs.path(kept), (OLD, OLD))
    db = ["--database-url", server.settings.database_url] if server.settings.database_url else []
    env = {k: v for k, v in os.environ.items() if not k.startswith("APT_MARKET_")} | {"APT_HOME": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "apt_marketplace", "gc", "--data-dir", str(server.settings.data_dir), *db, "--grace", "3600"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "stale spool file(s) (4096 bytes)" in proc.stdout and "orphan blob" in proc.stdout
    assert not path.exists() and not stale.exists()
    assert young.exists() and live.exists() and blobs.path(kept).exists()
    live.unlink()
    with server.client() as anon:
        assert anon.get(f"/api/v1/packages/{unique_name}/1.0.0/download").status_code == 200


def test_stale_spool_is_swept_at_start_up(tmp_path: Path, database_url, live_server_factory) -> None:
    data = tmp_path / "data"
    tmp = data / "blobs" / "tmp"
    tmp.mkdir(parents=True)
    dead = tmp / "upload-killed.tmp"
    dead.write_bytes(b"z" * (1 << 20))
    os.utime(dead, (OLD, OLD))
    fresh = tmp / "upload-fresh.tmp"
    fresh.write_bytes(b"z")
    with live_server_factory(Settings(data_dir=data, database_url=database_url, checks="off")):
        assert not dead.exists() and fresh.exists()


def test_scope_is_checked_before_any_wheel_is_inflated(server, json_error, unique_name: str) -> None:
    """A corrupt wheel would be a 400 once inflated; the 403 proves it never was."""
    buf = io.BytesIO()
    wheel = f"wheels/{unique_name.replace('-', '_')}-1.0.0-py3-none-any.whl"
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("apx.json", json.dumps({"name": unique_name, "version": "1.0.0", "files": {wheel: "0" * 64}}))
        zf.writestr(wheel, os.urandom(1000))
        info = zf.getinfo(wheel)
    data = bytearray(buf.getvalue())
    start = info.header_offset + 30 + len(wheel.encode())
    data[start : start + 8] = b"\xff" * 8
    with server.client(server.key("apt-plugin-someone-else-entirely")) as c:
        detail = json_error(c.post("/api/v1/publish", content=bytes(data)), 403, "forbidden")
    assert unique_name in detail
    with server.client(server.key(unique_name)) as c:
        assert "corrupt" in json_error(c.post("/api/v1/publish", content=bytes(data)), 400, "invalid_archive")
    assert not list(server.catalog.blobs.tmp.iterdir())


def test_uploaded_wheels_stream_to_disk_not_memory(make_apx, unique_name: str, tmp_path: Path) -> None:
    archive = make_apx(unique_name)
    spool = tmp_path / "spool"
    spool.mkdir()
    apx = read_apx(archive, spool_dir=spool)
    [wheel] = apx.wheels
    assert wheel.content is None and wheel.file is not None and wheel.file.parent == spool
    assert wheel.file.stat().st_size == wheel.size and read_apx(archive).wheels[0].data == wheel.data


def test_a_database_from_before_gains_the_new_columns(tmp_path: Path) -> None:
    from sqlalchemy import text

    from apt_marketplace.database import Database
    from apt_marketplace.server.models import Base
    from apt_marketplace.server.upgrade import add_missing_columns

    db = Database(f"sqlite:///{tmp_path / 'old.db'}")
    db.create_all(Base.metadata)
    with db.engine.begin() as conn:
        conn.execute(text("DROP INDEX ix_releases_status"))
        conn.execute(text("ALTER TABLE releases DROP COLUMN status"))
        conn.execute(text("ALTER TABLE packages DROP COLUMN review"))
        conn.execute(text("INSERT INTO packages (name, display_name, summary, downloads, created_at) VALUES ('p', 'p', '', 0, '2020-01-01')"))
    assert sorted(add_missing_columns(db.engine, Base.metadata)) == ["packages.review", "releases.status"]
    with db.engine.begin() as conn:
        assert conn.execute(text("SELECT review FROM packages")).scalar() == "ok"
    assert add_missing_columns(db.engine, Base.metadata) == []
    db.dispose()
