"""The client's local pieces without pip or the sandbox: wheel unpacking, the download cache,
the state database, rollback target selection and the CLI's one-line errors.

The whole install/upgrade/rollback flow against a real server and the real moe plugin is
`tests/test_market_e2e.py` at the repository root.
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from apt_marketplace.apx.errors import ApxError
from apt_marketplace.apx.reader import WheelEntry
from apt_marketplace.client.cache import ArchiveCache
from apt_marketplace.client.errors import UsageError
from apt_marketplace.client.install import LocalMarket, _closure, environment
from apt_marketplace.client.sandboxing import unpack_wheel
from apt_marketplace.client.state import Pin, StateDB


def _wheel(entries: dict[str, bytes]) -> WheelEntry:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, body in entries.items():
            zf.writestr(name, body)
    data = buf.getvalue()
    return WheelEntry("wheels/x-1.0.0-py3-none-any.whl", "x-1.0.0-py3-none-any.whl",
                      hashlib.sha256(data).hexdigest(), len(data), b"", None, content=data)


def test_unpack_wheel_maps_purelib_and_refuses_escapes(tmp_path: Path) -> None:
    unpack_wheel(_wheel({"x/__init__.py": b"A = 1\n", "x-1.0.0.data/purelib/y.py": b"B = 2\n",
                         "x-1.0.0.data/scripts/run": b"#!/bin/sh\n", "x-1.0.0.dist-info/METADATA": b"Name: x\n"}), tmp_path)
    assert (tmp_path / "x" / "__init__.py").read_bytes() == b"A = 1\n"
    assert (tmp_path / "y.py").read_bytes() == b"B = 2\n"
    assert not (tmp_path / "run").exists() and not (tmp_path / "x-1.0.0.data").exists()
    for bad in ("../evil.py", "/abs.py", "a/../../evil.py", "a\\b.py"):
        with pytest.raises(ApxError, match="outside the install root"):
            unpack_wheel(_wheel({bad: b""}), tmp_path / "other")
    assert not (tmp_path.parent / "evil.py").exists()


def test_cache_is_content_addressed_and_drops_damaged_files(tmp_path: Path) -> None:
    cache = ArchiveCache(tmp_path)
    sha = cache.put(b"archive bytes")
    assert sha == hashlib.sha256(b"archive bytes").hexdigest()
    assert cache.get(sha) == b"archive bytes" and cache.put(b"archive bytes") == sha
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == [f"{sha}.apx"]
    cache.path(sha).write_bytes(b"tampered")
    assert cache.get(sha) is None and not cache.path(sha).exists()
    assert cache.get("0" * 64) is None
    with pytest.raises(ValueError):
        cache.path("../x")


def _pin(name: str, version: str, requires: dict[str, str] | None = None) -> Pin:
    return Pin(name, version, hashlib.sha256(f"{name} {version}".encode()).hexdigest(), requires or {}, ["router.x"])


def _record(db: StateDB, env: str, action: str, pins: dict[str, Pin], before: str | None, direct: str = "a") -> int:
    tid = db.begin_change(env, action, direct, before, pins[direct].version, "http://market", pins,
                          [{"name": n, "from": None, "to": p.version} for n, p in pins.items()])
    db.finish_change(tid, env, pins, [], {direct: "*"})
    return tid


def test_state_records_history_per_environment_and_pending_changes(tmp_path: Path) -> None:
    db = StateDB(tmp_path / "state.db")
    try:
        first = {"a": _pin("a", "1.0.0", {"b": "^1.0"}), "b": _pin("b", "1.0.0")}
        _record(db, "/env/one", "install", first, None)
        second = {"a": _pin("a", "1.1.0", {"c": "^2.0"}), "c": _pin("c", "2.0.0")}
        tid = db.begin_change("/env/one", "upgrade", "a", "1.0.0", "1.1.0", "http://market", second, [])
        assert [t.status for t in db.history("/env/one")] == ["done", "pending"]
        db.finish_change(tid, "/env/one", second, ["b"], {"a": "*"})
        rows = db.installed("/env/one")
        assert {n: (r.version, r.direct) for n, r in rows.items()} == {"a": ("1.1.0", True), "c": ("2.0.0", False)}
        assert db.installed("/env/two") == {}
        failed = db.begin_change("/env/one", "upgrade", "a", "1.1.0", "1.2.0", "http://market", second, [])
        db.fail_change(failed, "pip install failed: no space left")
        history = db.history("/env/one", "b")
        assert [(t.action, t.status) for t in history] == [("install", "done")]
        assert [t.status for t in db.history("/env/one")] == ["done", "done", "failed"]
        assert all(t.user for t in db.history("/env/one"))
    finally:
        db.close()


def test_rollback_target_is_the_latest_set_with_another_version(tmp_path: Path) -> None:
    market = LocalMarket(tmp_path, None, say=lambda _line: None)
    try:
        env = environment()
        v1 = {"a": _pin("a", "1.0.0", {"b": "^1.0"}), "b": _pin("b", "1.0.0")}
        v2 = {"a": _pin("a", "2.0.0"), "b": _pin("b", "1.0.0")}
        v3 = {"a": _pin("a", "3.0.0")}
        for action, pins, before in (("install", v1, None), ("upgrade", v2, "1.0.0"), ("upgrade", v3, "2.0.0")):
            _record(market.state, env, action, pins, before)
        current = market.state.installed(env)["a"]
        assert market._rollback_target("a", current, None).resolved["a"]["version"] == "2.0.0"
        target = market._rollback_target("a", current, "1.0.0")
        assert target.action == "install" and _closure({n: Pin.from_dict(n, d) for n, d in target.resolved.items()}, {"a"}) == {"a", "b"}
        with pytest.raises(UsageError, match="never installed here; the history has 1.0.0, 2.0.0, 3.0.0"):
            market._rollback_target("a", current, "4.0.0")
        with pytest.raises(UsageError, match="not installed with 'apt market install'"):
            market.rollback("zzz", None)
    finally:
        market.close()


def test_closure_keeps_what_direct_plugins_need() -> None:
    pins = {"a": _pin("a", "1.0.0", {"B": "^1"}), "b": _pin("b", "1.0.0", {"c": "^1"}), "c": _pin("c", "1.0.0"),
            "d": _pin("d", "1.0.0")}
    assert _closure(pins, {"a"}) == {"a", "b", "c"}
    assert _closure(pins, {"d", "missing"}) == {"d"}


def _cli(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {"APT_HOME": str(home), "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-m", "apt_marketplace", *args], capture_output=True, text=True, env=env,
                          timeout=120, cwd=home.parent)


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["install", "apt-plugin-moe@"], 2, "is not NAME[@RANGE]"),
        (["install", "apt-plugin-moe@^^1"], 2, "apt-plugin-moe@^^1"),
        (["upgrade", "apt-plugin-moe"], 2, "was not installed with 'apt market install'"),
        (["rollback", "apt-plugin-moe"], 2, "nothing to roll back"),
        (["install", "apt-plugin-moe", "--url", "http://127.0.0.1:9"], 1, "cannot reach the marketplace"),
    ],
)
def test_cli_errors_are_one_line(tmp_path: Path, args: list[str], code: int, needle: str) -> None:
    proc = _cli(*args, home=tmp_path / "home")
    assert proc.returncode == code, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("apt market: error: ") and needle in lines[0], proc.stderr


def test_cli_list_and_history_when_empty(tmp_path: Path) -> None:
    listed = _cli("list", home=tmp_path / "home")
    assert listed.returncode == 0 and "no plugins installed" in listed.stdout
    shown = _cli("history", "--json", home=tmp_path / "home")
    assert shown.returncode == 0 and shown.stdout.strip() == "[]"
