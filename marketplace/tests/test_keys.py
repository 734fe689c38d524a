"""Keys from the attacker's side: a revoked or expired token gets 401 however it is sent, and
the audit log says who published, yanked, created, revoked and used a key, from where."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest

from apt_marketplace.server.keys import parse_expiry


def _market(server, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    db = ["--database-url", server.settings.database_url] if server.settings.database_url else ["--data-dir", str(server.settings.data_dir)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("APT_MARKET_")}
    env["APT_HOME"] = str(home)
    return subprocess.run([sys.executable, "-m", "apt_marketplace", *args, *db], capture_output=True, text=True, env=env, timeout=120)


def test_cli_keys_lifecycle_and_audit(server, make_apx, json_error, unique_name: str, tmp_path: Path) -> None:
    created = _market(server, tmp_path, "keys", "create", "--package", unique_name, "--expires", "30d", "--label", "ci")
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    key_id = token.split("_")[1]
    assert token.startswith("aptm_") and f"key {key_id}" in created.stderr and "expires" in created.stderr
    with server.client(token) as c:
        assert c.post("/api/v1/publish", content=make_apx(unique_name).read_bytes()).status_code == 201
        assert c.post(f"/api/v1/packages/{unique_name}/1.0.0/yank", json={"reason": "leaks memory"}).status_code == 200
    listed = json.loads(_market(server, tmp_path, "keys", "list", "--json").stdout)
    mine = next(k for k in listed if k["key_id"] == key_id)
    assert mine["state"] == "active" and mine["packages"] == [unique_name] and mine["last_used_from"] == "127.0.0.1"
    expires_in = (mine["expires_at"][:10], mine["created_at"][:10])
    assert expires_in[0] > expires_in[1]
    revoked = _market(server, tmp_path, "keys", "revoke", key_id)
    assert revoked.returncode == 0 and "revoked" in revoked.stdout
    with server.client(token) as c:
        detail = json_error(c.post(f"/api/v1/packages/{unique_name}/1.0.0/unyank"), 401, "unauthorized")
        assert "revoked" in detail
        json_error(c.post("/api/v1/publish", content=make_apx(unique_name, "1.0.1").read_bytes()), 401, "unauthorized")
    audit = json.loads(_market(server, tmp_path, "audit", "--package", unique_name, "--json").stdout)
    actions = [(e["action"], e["version"], e["key_id"], e["address"]) for e in reversed(audit)]
    assert actions == [("publish", "1.0.0", key_id, "127.0.0.1"), ("yank", "1.0.0", key_id, "127.0.0.1")]
    everything = _market(server, tmp_path, "audit", "--limit", "1000").stdout
    for action in ("key.created", "key.used", "key.revoked"):
        assert any(action in line and key_id in line for line in everything.splitlines()), action
    assert any("key.used" in line and "from 127.0.0.1" in line and key_id in line for line in everything.splitlines())
    rows = [line for line in _market(server, tmp_path, "keys", "list").stdout.splitlines() if line.startswith(key_id)]
    assert len(rows) == 1 and "revoked" in rows[0]


def test_expired_key_is_refused(server, make_apx, json_error, unique_name: str) -> None:
    new = server.keys.create([unique_name], "short", expires=timedelta(seconds=1))
    with server.client(new.token) as c:
        time.sleep(1.2)
        detail = json_error(c.post("/api/v1/publish", content=make_apx(unique_name).read_bytes()), 401, "unauthorized")
        assert "expired" in detail
        assert c.get(f"/api/v1/packages/{unique_name}").status_code == 401
    with server.client() as anon:
        assert anon.get(f"/api/v1/packages/{unique_name}").status_code == 404


def test_forged_and_malformed_tokens(server, json_error, unique_name: str) -> None:
    real = server.key(unique_name)
    prefix, key_id, secret = real.split("_", 2)
    for forged in (f"{prefix}_{key_id}_{secret[:-1]}x", f"{prefix}_{'0' * 200}_{secret}", f"pypi_{key_id}_{secret}", "aptm__"):
        with server.client(forged) as c:
            json_error(c.put(f"/api/v1/packages/{unique_name}/ratings", json={"score": 5}), 401, "unauthorized")


@pytest.mark.parametrize("text", ["0d", "90", "never", "400d", "1y", "9" * 20 + "d"])
def test_bad_expiry_is_a_one_line_usage_error(server, tmp_path: Path, text: str) -> None:
    with pytest.raises(ValueError):
        parse_expiry(text)
    proc = _market(server, tmp_path, "keys", "create", "--package", "apt-plugin-x", "--expires", text)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "--expires" in proc.stderr
