from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import os
import socket
import textwrap
import threading
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from apt_marketplace.apx.manifest import Manifest
from apt_marketplace.apx.pack import write_apx
from apt_marketplace.semver import to_pep440
from apt_marketplace.server.app import create_app
from apt_marketplace.server.catalog import Catalog
from apt_marketplace.server.keys import KeyStore
from apt_marketplace.server.settings import Settings


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str | None]:
    """SQLite by default; with APT_TEST_DATABASE_URL, a private PostgreSQL schema per session."""
    base = os.environ.get("APT_TEST_DATABASE_URL")
    if not base:
        yield None
        return
    schema = f"apt_market_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(base)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = make_url(base).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@dataclass
class LiveServer:
    url: str
    settings: Settings
    catalog: Catalog
    keys: KeyStore

    def key(self, *packages: str, label: str = "test", owner: str | None = None) -> str:
        return self.keys.create(list(packages), label, owner).token

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)


@contextlib.contextmanager
def live_server(settings: Settings) -> Iterator[LiveServer]:
    """A real uvicorn server on 127.0.0.1 in a thread, stopped (lifespan included) on exit."""
    app = create_app(settings)
    port = _free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    uv_server = uvicorn.Server(config)
    thread = threading.Thread(target=uv_server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv_server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the marketplace server did not start")
        time.sleep(0.05)
    try:
        yield LiveServer(f"http://127.0.0.1:{port}", settings, app.state.catalog, app.state.keys)
    finally:
        uv_server.should_exit = True
        thread.join(timeout=15)


@pytest.fixture(scope="session")
def live_server_factory() -> Callable[[Settings], contextlib.AbstractContextManager[LiveServer]]:
    return live_server


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, database_url: str | None) -> Iterator[LiveServer]:
    """Publish checks off: these tests are about storage, search and the index, not vetting."""
    data_dir = tmp_path_factory.mktemp("market-data")
    settings = Settings(
        data_dir=data_dir, database_url=database_url, max_upload_bytes=4 << 20, metadata_min_wheel_bytes=0, checks="off"
    )
    with live_server(settings) as live:
        yield live


@pytest.fixture
def unique_name() -> str:
    return f"apt-plugin-t{uuid.uuid4().hex[:10]}"


def build_wheel(
    name: str,
    version: str,
    requires_dist: list[str] | None = None,
    module: str | None = None,
    extra_files: dict[str, bytes] | None = None,
    entry_points: str = "[apt.providers]\nattention.fake = fake_plugin.provider:FakeProvider\n",
    requires_python: str = ">=3.8",
    build_tag: str = "",
) -> tuple[str, bytes]:
    """A minimal, installable pure-Python wheel built in memory (packing a real project costs a
    pip subprocess; most tests only need valid bytes)."""
    dist = name.replace("-", "_")
    module = module or dist
    files: dict[str, bytes] = {
        f"{module}/__init__.py": f"VERSION = {version!r}\n".encode(),
        **(extra_files or {}),
    }
    meta = [
        "Metadata-Version: 2.1",
        f"Name: {name}",
        f"Version: {version}",
        "Summary: test plugin",
        f"Requires-Python: {requires_python}",
        *[f"Requires-Dist: {r}" for r in (requires_dist or [])],
    ]
    distinfo = f"{dist}-{version}.dist-info"
    files[f"{distinfo}/METADATA"] = ("\n".join(meta) + "\n").encode()
    files[f"{distinfo}/WHEEL"] = b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    if entry_points:
        files[f"{distinfo}/entry_points.txt"] = entry_points.encode()
    record = []
    for path, body in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(body).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(body)}")
    record.append(f"{distinfo}/RECORD,,")
    files[f"{distinfo}/RECORD"] = ("\n".join(record) + "\n").encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for path, body in files.items():
            info = zipfile.ZipInfo(path, date_time=(2020, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            zf.writestr(info, body, zipfile.ZIP_DEFLATED)
    return f"{dist}-{version}{'-' + build_tag if build_tag else ''}-py3-none-any.whl", buf.getvalue()


@pytest.fixture
def wheel_factory() -> Callable[..., tuple[str, bytes]]:
    return build_wheel


@pytest.fixture
def make_apx(tmp_path: Path) -> Callable[..., Path]:
    def make(
        name: str,
        version: str = "1.0.0",
        requires: dict[str, str] | None = None,
        core: str = "^2.0",
        provides: tuple[str, ...] = ("attention.fake",),
        summary: str = "a test plugin",
        wheel_version: str | None = None,
        signing_key=None,
    ) -> Path:
        wv = wheel_version or to_pep440(version)
        filename, data = build_wheel(name, wv, ["apt-core>=2,<3", "torch"])
        manifest = Manifest(
            name=name, version=version, summary=summary, provides=provides, requires=requires or {}, core=core, python=">=3.8"
        )
        out = tmp_path / f"{name}-{version}-{uuid.uuid4().hex[:6]}.apx"
        return write_apx(out, manifest, {filename: data}, signing_key)

    return make


@pytest.fixture(scope="session")
def plugin_project(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """A real plugin project on disk (pyproject + src), packed with the real build pipeline."""

    def make(name: str, version: str = "1.0.0", requires: dict[str, str] | None = None, core: str = "^2.0") -> Path:
        root = tmp_path_factory.mktemp("plugin-project")
        module = "fake_plugin"
        req_lines = "\n".join(f'"{k}" = "{v}"' for k, v in (requires or {}).items())
        (root / "pyproject.toml").write_text(
            textwrap.dedent(
                f"""\
                [build-system]
                requires = ["hatchling"]
                build-backend = "hatchling.build"

                [project]
                name = "{name}"
                version = "{version}"
                description = "A fake attention provider for tests"
                requires-python = ">=3.8"
                dependencies = ["apt-core>=2,<3", "torch"]

                [project.entry-points."apt.providers"]
                "attention.fake" = "fake_plugin.provider:FakeProvider"

                [tool.apt]
                provides = ["attention.fake"]
                core = "{core}"
                sandbox = "allowed"

                [tool.apt.requires]
                {req_lines}

                [tool.hatch.build.targets.wheel]
                packages = ["src/{module}"]
                """
            )
        )
        pkg = root / "src" / module
        pkg.mkdir(parents=True)
        (pkg / "__init__.py").write_text("")
        (pkg / "provider.py").write_text(
            "class FakeProvider:\n    kind = 'attention'\n    name = 'fake'\n"
        )
        return root

    return make


def raw_apx(manifest: dict, wheels: dict[str, bytes]) -> bytes:
    """An archive whose apx.json is written as given, unvalidated: what an attacker sends."""
    entries = {f"wheels/{fn}": data for fn, data in wheels.items()}
    doc = {"format": 1, "core": "^2.0", "python": ">=3.8", "provides": ["attention.fake"], **manifest}
    doc.setdefault("files", {p: hashlib.sha256(b).hexdigest() for p, b in entries.items()})
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("apx.json", json.dumps(doc))
        for path, body in entries.items():
            zf.writestr(path, body)
    return buf.getvalue()


@pytest.fixture(name="raw_apx")
def raw_apx_fixture() -> Callable[[dict, dict[str, bytes]], bytes]:
    return raw_apx


def assert_json_error(resp: httpx.Response, status: int, code: str | None = None) -> str:
    """The standard error shape, one line of detail; returns the detail."""
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error", "detail"} and body["detail"] and "\n" not in body["detail"], body
    if code is not None:
        assert body["error"] == code, body
    return body["detail"]


@pytest.fixture(name="json_error")
def json_error_fixture() -> Callable[..., str]:
    return assert_json_error
