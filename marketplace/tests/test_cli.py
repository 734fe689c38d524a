from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("APT_MARKET_")}
    env["APT_HOME"] = str(home)
    env.update(extra)
    return env


def apt_market(*args: str, home: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "apt_marketplace", *args], capture_output=True, text=True, env=_env(home, **env), timeout=180
    )


def _db_flags(server) -> list[str]:
    if server.settings.database_url:
        return ["--database-url", server.settings.database_url]
    return ["--data-dir", str(server.settings.data_dir)]


def _assert_one_line_error(proc: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    assert proc.returncode == code, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("apt market: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0]


def test_pack_keys_publish_search_info_yank(server, plugin_project, tmp_path: Path) -> None:
    name = f"apt-plugin-cli{uuid.uuid4().hex[:8]}"
    project = plugin_project(name, "1.0.0")
    packed = apt_market("pack", str(project), "--out", str(tmp_path), "--no-build-isolation", home=tmp_path)
    assert packed.returncode == 0, packed.stderr
    archive = Path(packed.stdout.strip())
    assert archive.name == f"{name}-1.0.0.apx" and archive.is_file()

    created = apt_market("keys", "create", "--package", name, *_db_flags(server), home=tmp_path)
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert token.startswith("aptm_") and "only its hash" in created.stderr

    published = apt_market("publish", str(archive), "--token", token, "--url", server.url, home=tmp_path)
    assert published.returncode == 0, published.stderr
    assert f"{name} 1.0.0 published" in published.stdout

    (tmp_path / "market.toml").write_text(f'url = "{server.url}"\ntoken = "{token}"\n')
    again = apt_market("publish", str(archive), home=tmp_path)
    assert "already published" in again.stdout

    found = apt_market("search", name[-8:], "--kind", "attention", home=tmp_path)
    assert found.returncode == 0 and name in found.stdout and "attention.fake" in found.stdout
    assert "no plugins found" in apt_market("search", name[-8:], "--kind", "router", home=tmp_path).stdout

    yanked = apt_market("yank", name, "1.0.0", "--reason", "memory leak", home=tmp_path)
    assert yanked.returncode == 0 and "yanked: memory leak" in yanked.stdout
    info = apt_market("info", name, home=tmp_path, APT_MARKET_URL=server.url)
    assert info.returncode == 0
    assert f"{name} 1.0.0" in info.stdout and "yanked: memory leak" in info.stdout

    resolved = apt_market("resolve", f"{name}@=1.0.0", "--core", "2.0.0", home=tmp_path)
    assert resolved.returncode == 0 and resolved.stdout.strip() == f"{name} 1.0.0"
    clash = apt_market("resolve", f"{name}@^1.0", "--core", "2.0.0", home=tmp_path)
    assert clash.returncode == 1 and "1.0.0 is yanked" in clash.stderr


def test_bad_input_gives_one_line_and_exit_2(server, tmp_path: Path) -> None:
    _assert_one_line_error(apt_market("publish", str(tmp_path / "missing.apx"), "--url", server.url, "--token", "t", home=tmp_path), 2, "apt market pack")
    archive = tmp_path / "x.apx"
    archive.write_bytes(b"zip?")
    _assert_one_line_error(apt_market("publish", str(archive), "--url", server.url, home=tmp_path), 2, "--token", "APT_MARKET_TOKEN")
    _assert_one_line_error(apt_market("yank", "x", "1.0.0", home=tmp_path), 2, "--reason")
    _assert_one_line_error(apt_market("frobnicate", home=tmp_path), 2, "--help")
    _assert_one_line_error(apt_market("pack", str(tmp_path), home=tmp_path), 2, "pyproject.toml")
    _assert_one_line_error(apt_market("keys", "create", "--package", "x", home=tmp_path), 2, "--data-dir")
    _assert_one_line_error(apt_market("search", "x", "--url", "ftp://nowhere", home=tmp_path), 2, "http://")
    rejected = apt_market("publish", str(archive), "--url", server.url, "--token", "aptm_0_0", home=tmp_path)
    _assert_one_line_error(rejected, 1, "401")
    assert apt_market("--help", home=tmp_path).returncode == 0


def test_unreachable_server_retries_then_fails(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    proc = apt_market("info", "anything", "--url", f"http://127.0.0.1:{port}", home=tmp_path)
    _assert_one_line_error(proc, 1, "cannot reach the marketplace", "--url")
    assert time.monotonic() - start >= 1.5


def test_serve_runs_the_app(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "apt_marketplace", "serve", "--data-dir", str(tmp_path / "data"), "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_env(tmp_path),
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                resp = httpx.get(f"http://127.0.0.1:{port}/api/v1/health", timeout=2)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    pytest.fail("server did not start: " + (proc.stderr.read().decode() if proc.stderr else ""))
                time.sleep(0.2)
        assert resp.json() == {"status": "ok"}
        assert (tmp_path / "data" / "market.db").is_file()
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        if proc.stderr:
            proc.stderr.close()
