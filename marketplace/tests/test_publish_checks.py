"""Broken and hostile releases from the attacker's side, against a server that runs every
publish check: each is quarantined on upload, fails with the reason that names the check, is
visible only to its owner, and never reaches search, resolve, downloads or /simple/."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from apt_marketplace.apx.manifest import Manifest
from apt_marketplace.apx.pack import pack, write_apx
from apt_marketplace.server.settings import Settings

REPO = Path(__file__).resolve().parents[2]
JSON_V1 = "application/vnd.pypi.simple.v1+json"
GOOD_PROVIDER = b"raise ImportError('the fused kernel library is not installed')\n"


@pytest.fixture(scope="module")
def checked(tmp_path_factory: pytest.TempPathFactory, database_url: str | None, request) -> Iterator:
    live_server = request.getfixturevalue("live_server_factory")
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("checked-market"), database_url=database_url, checks="sandbox", check_workers=2,
        check_poll_seconds=0.2,
    )
    with live_server(settings) as live:
        yield live


def _apx(tmp_path: Path, wheel_factory, name: str, version: str = "1.0.0", requires=None, provides=("attention.fake",), **wheel) -> Path:
    filename, data = wheel_factory(name, version, ["apt-core>=2,<3", "torch"], **wheel)
    manifest = Manifest(name=name, version=version, provides=provides, requires=requires or {}, core="^2.0", python=">=3.8")
    return write_apx(tmp_path / f"{name}-{version}-{uuid.uuid4().hex[:6]}.apx", manifest, {filename: data})


def _settled(client, name: str, version: str, timeout: float = 400) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        releases = client.get(f"/api/v1/packages/{name}").json()["releases"]
        release = next(r for r in releases if r["version"] == version)
        if release["status"] not in ("quarantined",) or time.monotonic() > deadline:
            return release
        time.sleep(0.2)


def _invisible(server, name: str) -> None:
    with server.client() as anon:
        assert anon.get(f"/api/v1/packages/{name}").status_code == 404
        assert anon.get(f"/simple/{name}/", headers={"Accept": JSON_V1}).status_code == 404
        assert name not in anon.get("/simple/", headers={"Accept": JSON_V1}).text
        assert all(h["name"] != name for h in anon.get("/api/v1/search", params={"q": name}).json()["results"])
        assert anon.post("/api/v1/resolve", json={"requirements": {name: "*"}}).status_code == 409


HOSTILE = {
    "no entry points": ({"entry_points": ""}, "manifest and entry points agree", "no apt.providers, apt.plugins, apt.commands entry points"),
    "entry points disagree": (
        {"entry_points": "[apt.providers]\nrouter.other = fake_plugin.provider:X\n"},
        "manifest and entry points agree",
        "router.other",
    ),
    ".pth": ({"extra_files": {"zz_hook.pth": b"import os; os.system('id')\n"}}, "no install-time code", ".pth"),
    "scripts": ({"extra_files": {"DIST.data/scripts/pip": b"#!/bin/sh\necho owned\n"}}, "no install-time code", "scripts/"),
    "headers": ({"extra_files": {"DIST.data/headers/x.h": b"int x;\n"}}, "no install-time code", "headers/"),
    "console script": (
        {"entry_points": "[apt.providers]\nattention.fake = m:P\n[console_scripts]\npip = m:main\n"},
        "no install-time code",
        "console_scripts",
    ),
    "sitecustomize": ({"extra_files": {"sitecustomize.py": b"print('hi')\n"}}, "no install-time code", "sitecustomize"),
    "shadows torch": ({"extra_files": {"torch/__init__.py": b"\n"}}, "no install-time code", "shadows"),
}


@pytest.mark.parametrize("attack", sorted(HOSTILE))
def test_hostile_wheels_fail_their_checks(checked, wheel_factory, tmp_path: Path, attack: str) -> None:
    name = f"apt-plugin-h{uuid.uuid4().hex[:10]}"
    wheel, check, needle = HOSTILE[attack]
    dist = name.replace("-", "_")
    if "extra_files" in wheel:
        wheel = {"extra_files": {k.replace("DIST", f"{dist}-1.0.0"): v for k, v in wheel["extra_files"].items()}}
    archive = _apx(tmp_path, wheel_factory, name, **wheel)
    with checked.client(checked.key(name)) as owner:
        resp = owner.post("/api/v1/publish", content=archive.read_bytes())
        assert resp.status_code == 202 and resp.json()["status"] == "quarantined", resp.text
        release = _settled(owner, name, "1.0.0")
        assert release["status"] == "failed", release
        assert release["status_reason"].startswith(check) or f"; {check}" in release["status_reason"], release
        assert needle in release["status_reason"], release
        detail = owner.get(f"/api/v1/packages/{name}/1.0.0").json()
        assert any(c["name"] == check and not c["ok"] for c in detail["checks"])
    _invisible(checked, name)
    with checked.client() as anon:
        [wheel] = detail["files"]
        assert anon.get(wheel["url"]).status_code == 404
        assert anon.get(wheel["url"] + ".metadata").status_code == 404
        assert anon.get(f"/api/v1/packages/{name}/1.0.0/download").status_code == 404


def test_unresolvable_dependency_fails(checked, wheel_factory, tmp_path: Path) -> None:
    name = f"apt-plugin-d{uuid.uuid4().hex[:10]}"
    with checked.client(checked.key(name)) as owner:
        assert owner.post("/api/v1/publish", content=_apx(tmp_path, wheel_factory, name, requires={"apt-plugin-moe": ">=99"}).read_bytes()).status_code == 202
        release = _settled(owner, name, "1.0.0")
    assert release["status"] == "failed" and "dependencies resolve" in release["status_reason"] and ">=99" in release["status_reason"]
    _invisible(checked, name)


def test_provider_that_fails_to_import_fails_in_the_sandbox_and_can_be_replaced(
    checked, wheel_factory, tmp_path: Path
) -> None:
    name = f"apt-plugin-i{uuid.uuid4().hex[:10]}"
    broken = _apx(tmp_path, wheel_factory, name, extra_files={"fake_plugin/__init__.py": b"", "fake_plugin/provider.py": GOOD_PROVIDER})
    token = checked.key(name)
    with checked.client(token) as owner:
        assert owner.post("/api/v1/publish", content=broken.read_bytes()).status_code == 202
        release = _settled(owner, name, "1.0.0")
        assert release["status"] == "failed", release
        assert "sandbox" in release["status_reason"] and "fused kernel" in release["status_reason"], release
    _invisible(checked, name)
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("APT_MARKET_")} | {"APT_HOME": str(home)}
    info = subprocess.run(
        [sys.executable, "-m", "apt_marketplace", "info", name, "--all", "--url", checked.url, "--token", token],
        capture_output=True, text=True, env=env, timeout=60,
    )
    assert info.returncode == 0 and "FAILED" in info.stdout and "fused kernel" in info.stdout, info


def test_real_plugin_passes_every_check_and_upload_is_fast(checked, tmp_path: Path) -> None:
    """The first-party moe plugin goes quarantined -> published; the upload of a 1 MiB archive
    answers in under a second because the checks run in the background."""
    project = tmp_path / "moe"
    shutil.copytree(REPO / "apt-plugins" / "apt-plugin-moe", project, ignore=shutil.ignore_patterns("dist", "build", "*.egg-info"))
    (project / "src" / "apt_plugin_moe" / "padding.bin").write_bytes(os.urandom(1 << 20))
    archive = pack(project, tmp_path / "dist", build_isolation=False)
    assert archive.stat().st_size > 1 << 20
    with checked.client(checked.key("apt-plugin-moe")) as owner:
        started = time.perf_counter()
        resp = owner.post("/api/v1/publish", content=archive.read_bytes())
        elapsed = time.perf_counter() - started
        assert resp.status_code == 202 and resp.json()["status"] == "quarantined", resp.text
        assert elapsed < 1.0, elapsed
        release = _settled(owner, "apt-plugin-moe", "1.0.0")
    assert release["status"] == "published", release
    with checked.client(checked.key("apt-plugin-moe", owner=None)) as c:
        assert c.get("/api/v1/packages/apt-plugin-moe").json()["latest"] == "1.0.0"
    with checked.client() as anon:
        checks = anon.get("/api/v1/packages/apt-plugin-moe/1.0.0").json()["checks"]
        assert [c["name"] for c in checks if c["ok"]][-1] == "providers import and self-test in the sandbox"
        assert "router.topk_moe ok" in checks[-1]["detail"]
        page = anon.get("/simple/apt-plugin-moe/", headers={"Accept": JSON_V1}).json()
        assert page["versions"] == ["1.0.0"]
        assert anon.post("/api/v1/resolve", json={"requirements": {"apt-plugin-moe": "^1.0"}}).json()["pins"] == {"apt-plugin-moe": "1.0.0"}


def test_local_check_prints_the_servers_verdict(checked, wheel_factory, tmp_path: Path) -> None:
    name = f"apt-plugin-c{uuid.uuid4().hex[:10]}"
    dist = name.replace("-", "_")
    archive = _apx(tmp_path, wheel_factory, name, extra_files={f"{dist}-1.0.0.data/scripts/pip": b"#!/bin/sh\n"})
    env = {k: v for k, v in os.environ.items() if not k.startswith("APT_MARKET_")} | {"APT_HOME": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "apt_marketplace", "check", str(archive), "--url", checked.url],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 1, proc
    lines = proc.stdout.splitlines()
    assert any(line.startswith("pass  manifest and entry points agree") for line in lines)
    assert any(line.startswith("FAIL  no install-time code") and "scripts/" in line for line in lines)
    assert any(line.startswith("FAIL  providers import and self-test in the sandbox") and "not run" in line for line in lines)
    assert lines[-1].endswith("failed")
    garbage = tmp_path / "garbage.apx"
    garbage.write_bytes(b"PK\x05\x06 not an archive")
    proc = subprocess.run([sys.executable, "-m", "apt_marketplace", "check", str(garbage)], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 1 and proc.stdout.startswith("FAIL  archive: not a zip archive")


def test_command_only_plugin_is_published(checked, wheel_factory, tmp_path: Path) -> None:
    """An `apt.commands` plugin has nothing for apt-sandbox to validate; the static checks
    still hold it to the install-time rules."""
    name = f"apt-plugin-k{uuid.uuid4().hex[:10]}"
    archive = _apx(tmp_path, wheel_factory, name, provides=(), entry_points="[apt.commands]\nk = m:main\n")
    with checked.client(checked.key(name)) as owner:
        assert owner.post("/api/v1/publish", content=archive.read_bytes()).status_code == 202
        release = _settled(owner, name, "1.0.0")
    assert release["status"] == "published", release
    with checked.client() as anon:
        checks = anon.get(f"/api/v1/packages/{name}/1.0.0").json()["checks"]
    assert checks[-1]["detail"].startswith("nothing to validate")


def test_local_check_of_a_good_project_passes_every_check(checked, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("APT_MARKET_")} | {"APT_HOME": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "apt_marketplace", "check", str(REPO / "apt-plugins" / "apt-plugin-moe"),
         "--no-build-isolation", "--url", checked.url],
        capture_output=True, text=True, env=env, timeout=400,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[-1] == "7 passed, 0 failed", lines
    assert any(line.startswith("pass  providers import and self-test in the sandbox") and "router.topk_moe ok" in line for line in lines)


def test_real_pip_and_uv_never_see_a_failed_release(checked, wheel_factory, tmp_path: Path) -> None:
    name = f"apt-plugin-p{uuid.uuid4().hex[:10]}"
    dist = name.replace("-", "_")
    hostile = _apx(tmp_path, wheel_factory, name, extra_files={"zz.pth": b"import os\n", f"{dist}-1.0.0.data/scripts/pip": b"#!/bin/sh\n"})
    with checked.client(checked.key(name)) as owner:
        assert owner.post("/api/v1/publish", content=hostile.read_bytes()).status_code == 202
        assert _settled(owner, name, "1.0.0")["status"] == "failed"
    index = f"{checked.url}/simple/"
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--isolated", "--no-deps", "--index-url", index, "-d", str(tmp_path / "dl"), name],
        capture_output=True, text=True, timeout=120,
    )
    assert pip.returncode != 0 and "No matching distribution" in pip.stderr, pip.stdout + pip.stderr
    assert not (tmp_path / "dl").exists() or not list((tmp_path / "dl").iterdir())
    uv = Path(sys.executable).with_name("uv")
    if uv.is_file():
        dry = subprocess.run(
            [str(uv), "pip", "install", "--dry-run", "--no-deps", "--python", sys.executable, "--index-url", index, name],
            capture_output=True, text=True, timeout=120, env={**os.environ, "UV_NO_CACHE": "1"},
        )
        assert dry.returncode != 0 and name in dry.stderr, dry.stdout + dry.stderr
