"""The marketplace end to end: a real server, the real moe plugin, real CLI processes, pip.

The flow installs apt-plugin-moe 1.0.0 from the marketplace into a throwaway copy of the test
environment, upgrades it to a 1.1.0 that passes validation but breaks training, has a 1.2.0
that fails its self-test stopped by the server's publish checks (never installable, nothing
touched), then rolls back with the server stopped and trains with the restored router.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from core_cli import run

ROOT = Path(__file__).resolve().parent.parent
MOE = ROOT / "apt-plugins" / "apt-plugin-moe"
PACKAGE = "apt-plugin-moe"
TINY_MOE = ["train", "-p", "moe_reasoning_small", "--set", "model.align=null", "--set", "model.n_layer=1",
            "--set", "model.d_model=32", "--set", "model.block_size=16", "--set", "train.max_iters=8",
            "--set", "train.epoch_iters=4", "--set", "train.batch_size=4", "--set", "train.eval_interval=4",
            "--set", "train.eval_iters=1", "--set", "schedules.enable_moe_at_epoch=1",
            "--set", "logging.progress=false"]

pytest.importorskip("apt_marketplace")
pytest.importorskip("apt_sandbox")
pytest.importorskip("apt_plugin_moe")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _market(args: list[str], env: dict[str, str], python: str = sys.executable) -> subprocess.CompletedProcess[str]:
    return subprocess.run([python, "-m", "apt_marketplace", *args], env=env, capture_output=True, text=True,
                          timeout=300, stdin=subprocess.DEVNULL)


class MarketServer:
    """`apt market serve` in a subprocess; stop() and start() keep the same data and port."""

    def __init__(self, data_dir: Path, env: dict[str, str]) -> None:
        self.data_dir = data_dir
        self.env = env
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if self.proc is not None:
            return
        log = open(self.data_dir.parent / "server.log", "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "apt_marketplace", "serve", "--data-dir", str(self.data_dir),
                                      "--port", str(self.port)], env=self.env, stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the marketplace server exited with {self.proc.returncode}")
            try:
                if httpx.get(f"{self.url}/api/v1/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError("the marketplace server did not start within 60 s")

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MarketServer, str, Path]]:
    """A running server with the real apt-plugin-moe 1.0.0 published; yields (server, token, dist dir)."""
    root = tmp_path_factory.mktemp("market")
    env = {k: v for k, v in os.environ.items() if not k.startswith("APT_MARKET_") and k != "PYTHONPATH"}
    env["APT_HOME"] = str(root / "server_home")
    created = _market(["keys", "create", "--package", PACKAGE, "--data-dir", str(root / "data")], env)
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    server = MarketServer(root / "data", env)
    server.start()
    dist = root / "dist"
    try:
        assert _publish(_pack(MOE, dist, env), server, token, env)["status"] == "published"
        yield server, token, dist
    finally:
        server.stop()


def _pack(project: Path, dist: Path, env: dict[str, str]) -> Path:
    packed = _market(["pack", str(project), "--out", str(dist), "--no-build-isolation"], env)
    assert packed.returncode == 0, packed.stderr
    return Path(packed.stdout.strip())


def _publish(archive: Path, server: MarketServer, token: str, env: dict[str, str]) -> dict:
    """Upload, then wait for the server's background checks; returns the settled release."""
    published = _market(["publish", str(archive), "--url", server.url, "--token", token], env)
    assert published.returncode == 0, published.stderr
    version = published.stdout.split()[1]
    deadline = time.monotonic() + 400
    while True:
        info = httpx.get(f"{server.url}/api/v1/packages/{PACKAGE}", headers={"Authorization": f"Bearer {token}"}).json()
        release = next(r for r in info["releases"] if r["version"] == version)
        if release["status"] != "quarantined" or time.monotonic() > deadline:
            return release
        time.sleep(0.5)


def _clone_env(tmp_path: Path) -> str:
    """A hard-linked copy of the test environment (about a second) without apt-plugin-moe."""
    prefix = Path(sys.prefix)
    if prefix == Path(sys.base_prefix):
        pytest.skip("needs to run inside a virtual environment")
    clone = tmp_path / "venv"
    shutil.copytree(prefix, clone, symlinks=True, copy_function=os.link)
    python = str(clone / "bin" / "python")
    subprocess.run([python, "-m", "pip", "uninstall", "-y", "-q", PACKAGE], check=True, capture_output=True)
    return python


def _variant(tmp_path: Path, version: str, edits: dict[str, tuple[str, str]]) -> Path:
    """A copy of the moe project at another version with `edits` (file -> (old, new)) applied."""
    project = tmp_path / f"moe-{version}"
    shutil.copytree(MOE, project, ignore=shutil.ignore_patterns("dist", "build", "__pycache__", "*.egg-info", ".*"))
    changes = {"pyproject.toml": ('version = "1.0.0"', f'version = "{version}"'),
               "src/apt_plugin_moe/__init__.py": ('__version__ = "1.0.0"', f'__version__ = "{version}"'), **edits}
    for rel, (old, new) in changes.items():
        path = project / rel
        text = path.read_text()
        assert text.count(old) == 1, (rel, old)
        path.write_text(text.replace(old, new))
    return project


def _providers(python: str, env: dict[str, str], cwd: Path) -> dict[str, dict]:
    listed = run(["plugin", "list", "--json"], env=env, cwd=cwd, python=python)
    assert listed.returncode == 0, listed.stderr
    return {f"{r['kind']}.{r['name']}": r for r in json.loads(listed.stdout)}


def _installed(python: str, env: dict[str, str], cwd: Path) -> list[dict]:
    listed = run(["market", "list", "--json"], env=env, cwd=cwd, python=python)
    assert listed.returncode == 0, listed.stderr
    return json.loads(listed.stdout)


def _history(python: str, env: dict[str, str], cwd: Path) -> list[dict]:
    shown = run(["market", "history", "--json"], env=env, cwd=cwd, python=python)
    assert shown.returncode == 0, shown.stderr
    return json.loads(shown.stdout)


def _dist_version(python: str) -> str:
    code = f"import importlib.metadata as m; print(m.version({PACKAGE!r}))"
    return subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def _snapshot(directory: Path) -> dict[str, int]:
    return {str(p.relative_to(directory)): p.stat().st_size for p in directory.rglob("*") if p.is_file()}


def test_pip_installs_the_real_plugin_from_the_simple_index(market, tmp_path, env) -> None:
    server, _, _ = market
    server.start()
    python = _clone_env(tmp_path)
    pip = subprocess.run([python, "-m", "pip", "--isolated", "install", "--index-url", f"{server.url}/simple/",
                          "--no-deps", "--disable-pip-version-check", f"{PACKAGE}==1.0.0"],
                         capture_output=True, text=True, timeout=300)
    assert pip.returncode == 0, pip.stdout + pip.stderr
    router = _providers(python, env, tmp_path)["router.topk_moe"]
    assert (router["version"], router["distribution"], router["status"]) == ("1.0.0", PACKAGE, "ok")


def test_install_upgrade_refuse_and_rollback_offline(market, tmp_path, env) -> None:
    server, token, dist = market
    server.start()
    python = _clone_env(tmp_path)
    env["APT_MARKET_URL"] = server.url
    assert "router.topk_moe" not in _providers(python, env, tmp_path)

    # install 1.0.0: resolved, downloaded, validated in the sandbox, pip-installed, recorded
    installed = run(["market", "install", f"{PACKAGE}@^1.0.0"], env=env, cwd=tmp_path, python=python)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    assert f"validated {PACKAGE} 1.0.0 in the sandbox: router.topk_moe ok" in installed.stdout
    router = _providers(python, env, tmp_path)["router.topk_moe"]
    # a marketplace wheel is untrusted: listed from metadata, never imported in this process
    assert (router["version"], router["distribution"], router["status"]) == ("1.0.0", PACKAGE, "untrusted")
    [row] = _installed(python, env, tmp_path)
    assert (row["name"], row["version"], row["status"], row["direct"]) == (PACKAGE, "1.0.0", "ok", True)

    # upgrade to a 1.1.0 that validates (its self-test never builds a model) but cannot train
    broken_build = ("    def build(self, dims: ModelDims, layer: int, make_ffn: Callable[[], nn.Module]) -> nn.Module:\n",
                    "    def build(self, dims: ModelDims, layer: int, make_ffn: Callable[[], nn.Module]) -> nn.Module:\n"
                    "        raise RuntimeError('apt-plugin-moe 1.1.0 cannot build its layer')\n")
    released = _publish(_pack(_variant(tmp_path, "1.1.0", {"src/apt_plugin_moe/provider.py": broken_build}), dist, env),
                        server, token, env)
    assert released["status"] == "published", released
    upgraded = run(["market", "upgrade", PACKAGE], env=env, cwd=tmp_path, python=python)
    assert upgraded.returncode == 0, upgraded.stdout + upgraded.stderr
    assert f"upgrade: {PACKAGE} 1.0.0 -> 1.1.0" in upgraded.stdout
    assert _providers(python, env, tmp_path)["router.topk_moe"]["version"] == "1.1.0"
    failed = run([*TINY_MOE, "--set", f"checkpoint.dir={tmp_path / 'run-broken'}"], env=env, cwd=tmp_path, python=python)
    assert failed.returncode != 0 and "cannot build its layer" in failed.stdout + failed.stderr

    # a 1.2.0 whose self-test fails is stopped by the server's sandbox check: failed with the
    # reason, invisible to the index and the resolver, and nothing changes anywhere
    failing_test = ("    if not torch.allclose(layer.route(flat), expected, atol=1e-5):\n",
                    "    if True:\n")
    stopped = _publish(_pack(_variant(tmp_path, "1.2.0", {"src/apt_plugin_moe/selftest.py": failing_test}), dist, env),
                       server, token, env)
    assert stopped["status"] == "failed" and "grouped dispatch disagrees" in stopped["status_reason"], stopped
    simple = httpx.get(f"{server.url}/simple/{PACKAGE}/", headers={"Accept": "application/vnd.pypi.simple.v1+json"}).json()
    assert "1.2.0" not in simple["versions"]
    home = Path(env["APT_HOME"]) / "market"
    cache_before, history_before = _snapshot(home / "cache"), _history(python, env, tmp_path)
    refused = run(["market", "install", f"{PACKAGE}@1.2.0"], env=env, cwd=tmp_path, python=python)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "no set of plugin versions satisfies" in refused.stderr
    assert _dist_version(python) == "1.1.0"
    assert [(r["version"], r["status"]) for r in _installed(python, env, tmp_path)] == [("1.1.0", "ok")]
    assert _history(python, env, tmp_path) == history_before
    assert _snapshot(home / "cache") == cache_before

    # rollback with the server stopped: from the download cache, no network
    server.stop()
    rolled = run(["market", "rollback", PACKAGE], env=env, cwd=tmp_path, python=python)
    assert rolled.returncode == 0, rolled.stdout + rolled.stderr
    assert f"rollback: {PACKAGE} 1.1.0 -> 1.0.0" in rolled.stdout
    router = _providers(python, env, tmp_path)["router.topk_moe"]
    assert (router["version"], router["status"]) == ("1.0.0", "untrusted")
    assert [(r["version"], r["status"]) for r in _installed(python, env, tmp_path)] == [("1.0.0", "ok")]
    history = _history(python, env, tmp_path)
    assert [(h["action"], h["from"], h["to"], h["status"]) for h in history] == [
        ("install", None, "1.0.0", "done"), ("upgrade", "1.0.0", "1.1.0", "done"), ("rollback", "1.1.0", "1.0.0", "done")]
    assert all(h["user"] and h["resolved"][PACKAGE] == h["to"] for h in history)
    assert history[-1]["source"] == "cache"

    trained = run([*TINY_MOE, "--set", f"checkpoint.dir={tmp_path / 'run'}"], env=env, cwd=tmp_path, python=python)
    assert trained.returncode == 0, trained.stdout + trained.stderr
    assert "router topk_moe" in trained.stdout and re.search(r"done: finished at step 8", trained.stdout)
    # installed from the marketplace, so untrusted: the whole run went to apt-sandbox (see apt.jail)
    assert f"inside apt-sandbox (untrusted: router.topk_moe from {PACKAGE})" in trained.stderr

    # rolling forward again by version works offline too, and asking for an unknown one is bad input
    again = run(["market", "rollback", PACKAGE, "--to", "9.9.9"], env=env, cwd=tmp_path, python=python)
    assert again.returncode == 2 and again.stderr.startswith("apt market: error: ") and "1.0.0, 1.1.0" in again.stderr


@pytest.mark.parametrize("installer", ["pip", "uv"])
def test_pip_and_uv_install_plugin_and_core_from_the_marketplace(tmp_path, env, installer: str) -> None:
    """`serve --with-first-party` serves apt-core and the first-party plugins; a fresh
    environment that has torch but neither apt-core nor the plugin gets both from the
    marketplace (plus the normal index) with plain pip or uv, no --no-deps."""
    beside = Path(sys.executable).with_name("uv")
    uv = str(beside) if beside.is_file() else shutil.which("uv")
    if installer == "uv" and uv is None:
        pytest.skip("uv is not installed")
    server_env = {k: v for k, v in env.items() if not k.startswith("APT_MARKET_")}
    port = _free_port()
    data = tmp_path / "data"
    log = open(tmp_path / "server.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "apt_marketplace", "serve", "--data-dir", str(data), "--port", str(port),
                             "--with-first-party", "--checks", "static"], env=server_env, stdout=log, stderr=log)
    log.close()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        page: dict = {}
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                page = httpx.get(f"{url}/simple/", headers={"Accept": "application/vnd.pypi.simple.v1+json"}, timeout=5).json()
                names = {p["name"] for p in page["projects"]}
                if {"apt-core", PACKAGE} <= names:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        assert {"apt-core", PACKAGE} <= {p["name"] for p in page.get("projects", [])}, (tmp_path / "server.log").read_text()
        python = _clone_env(tmp_path)
        subprocess.run([python, "-m", "pip", "uninstall", "-y", "-q", "apt-core"], check=True, capture_output=True)
        if installer == "pip":
            cmd = [python, "-m", "pip", "install", "--index-url", f"{url}/simple/", "--extra-index-url", "https://pypi.org/simple",
                   PACKAGE]
        else:
            cmd = [str(uv), "pip", "install", "--python", python, "--index-url", f"{url}/simple/",
                   "--extra-index-url", "https://pypi.org/simple", PACKAGE]
        installed = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=server_env)
        assert installed.returncode == 0, installed.stdout + installed.stderr
        where = subprocess.run([python, "-c", "import importlib.metadata as m; d = m.distribution('apt-core'); "
                                "print(d.read_text('direct_url.json') is None, d.version)"],
                               capture_output=True, text=True, check=True).stdout.split()
        assert where == ["True", "2.0.0"], where
        router = _providers(python, env, tmp_path)["router.topk_moe"]
        assert (router["distribution"], router["status"]) == (PACKAGE, "ok")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_outdated_upgrade_explains_uninstall_and_rollback(market, tmp_path, env) -> None:
    server, token, dist = market
    server.start()
    python = _clone_env(tmp_path)
    env["APT_MARKET_URL"] = server.url
    released = _publish(_pack(_variant(tmp_path, "1.0.1", {}), dist, env), server, token, env)
    assert released["status"] == "published", released
    yanked = httpx.post(f"{server.url}/api/v1/packages/{PACKAGE}/1.0.1/yank", json={"reason": "wrong default"},
                        headers={"Authorization": f"Bearer {token}"})
    assert yanked.status_code == 200
    try:
        installed = run(["market", "install", f"{PACKAGE}@~1.0.0"], env=env, cwd=tmp_path, python=python)
        assert installed.returncode == 0, installed.stdout + installed.stderr
        assert _dist_version(python) == "1.0.0"

        outdated = run(["market", "outdated", "--json"], env=env, cwd=tmp_path, python=python)
        [row] = json.loads(outdated.stdout)
        assert (row["current"], row["wanted"], row["yanked"]) == ("1.0.0", "1.0.0", False)
        assert outdated.returncode == (1 if row["latest"] != "1.0.0" else 0)

        upgraded = run(["market", "upgrade", f"{PACKAGE}@~1.0.0"], env=env, cwd=tmp_path, python=python)
        assert upgraded.returncode == 0, upgraded.stdout + upgraded.stderr
        assert f"skipped {PACKAGE} 1.0.1: yanked (wrong default)" in upgraded.stdout
        if row["latest"] == "1.1.0":
            assert f"skipped {PACKAGE} 1.1.0: outside the requested range ~1.0.0" in upgraded.stdout
        assert "1.2.0" not in upgraded.stdout
        if row["latest"] == "1.1.0":
            told = run(["market", "upgrade", f"{PACKAGE}@~1.0.0"], env={**env, "APT_MARKET_TOKEN": token}, cwd=tmp_path,
                       python=python)
            assert f"skipped {PACKAGE} 1.2.0: failed: providers import and self-test in the sandbox" in told.stdout, told.stdout

        removed = run(["market", "uninstall", PACKAGE], env=env, cwd=tmp_path, python=python)
        assert removed.returncode == 0, removed.stdout + removed.stderr
        assert f"uninstalled {PACKAGE} 1.0.0" in removed.stdout
        assert "router.topk_moe" not in _providers(python, env, tmp_path)
        assert _installed(python, env, tmp_path) == []

        restored = run(["market", "rollback", PACKAGE], env=env, cwd=tmp_path, python=python)
        assert restored.returncode == 0, restored.stdout + restored.stderr
        assert _providers(python, env, tmp_path)["router.topk_moe"]["version"] == "1.0.0"
        assert [h["action"] for h in _history(python, env, tmp_path)][-2:] == ["uninstall", "rollback"]
    finally:
        httpx.post(f"{server.url}/api/v1/packages/{PACKAGE}/1.0.1/unyank", headers={"Authorization": f"Bearer {token}"})


def test_install_brings_ordinary_dependencies_from_the_index(market, tmp_path, env) -> None:
    """A plugin that needs a package from the normal index (here `six`, absent from the
    environment) gets it installed the way pip would, recorded in the history."""
    server, token, dist = market
    server.start()
    python = _clone_env(tmp_path)
    if subprocess.run([python, "-c", "import six"], capture_output=True).returncode == 0:
        subprocess.run([python, "-m", "pip", "uninstall", "-y", "-q", "six"], check=True, capture_output=True)
    env["APT_MARKET_URL"] = server.url
    project = _variant(tmp_path, "1.0.2", {})
    pyproject = project / "pyproject.toml"
    old = 'dependencies = ["apt-core>=2,<3", "torch>=2.4"]'
    assert pyproject.read_text().count(old) == 1
    pyproject.write_text(pyproject.read_text().replace(old, old[:-1] + ', "six>=1.10"]'))
    released = _publish(_pack(project, dist, env), server, token, env)
    assert released["status"] == "published", released
    installed = run(["market", "install", f"{PACKAGE}@=1.0.2"], env=env, cwd=tmp_path, python=python)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    assert "from the package index: six>=1.10" in installed.stdout
    assert subprocess.run([python, "-c", "import six"], capture_output=True).returncode == 0
    [entry] = _history(python, env, tmp_path)
    assert any(c["name"] == "six" and c["from"] is None and c.get("source") == "index" for c in entry["changes"]), entry
