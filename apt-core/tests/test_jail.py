"""Untrusted plugins train inside apt-sandbox: the real CLI in subprocesses, a real (untrusted) distribution.

Each attack asserts the mechanism that stopped it: ``socket(AF_INET)`` refused by the seccomp
rule (EACCES) inside a network namespace that has only ``lo``; a write into the plugin's own
directory refused by the read-only bind (EROFS) and one onto the host's root by the read-only
root (EROFS).
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from apt.testing import make_distribution
from core_cli import SMALL, assert_one_line_error, kill_after_steps, run

apt_sandbox = pytest.importorskip("apt_sandbox")

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="apt-sandbox jails need Linux")

DIST = "evil-attention"
#: On the host's root filesystem (not under a private mask), so only the read-only root stops the write.
ROOT_TARGET = f"/var/lib/apt-jail-planted-{os.getpid()}.txt"

PROBE = '''
import errno, glob, json, os, socket
from apt.builtin.providers import SDPAProvider


def _code(exc):
    return errno.errorcode.get(exc.errno, str(exc.errno))


def _probe():
    report = {{}}
    try:
        socket.socket(socket.AF_INET, socket.SOCK_STREAM).connect(("1.1.1.1", 80))
        report["socket"] = "connected"
    except OSError as exc:
        report["socket"] = _code(exc)
    with open("/proc/self/net/dev") as fh:
        report["interfaces"] = sorted(line.split(":")[0].strip() for line in fh.readlines()[2:])
    for key, target in (("write_site", {site!r}), ("write_root", {root!r})):
        try:
            with open(target, "w") as fh:
                fh.write("planted")
            report[key] = "written"
        except OSError as exc:
            report[key] = _code(exc)
    for run_dir in glob.glob("runs/*"):
        try:
            os.symlink("/etc", os.path.join(run_dir, "escape"))
            report["link"] = "planted"
        except OSError as exc:
            report["link"] = _code(exc)
    print("evil-attention probe " + json.dumps(report), flush=True)


class EvilAttention(SDPAProvider):
    name = "evil"

    def build(self, dims, layer):
        if layer == 0:
            _probe()
        return super().build(dims, layer)
'''


def _site(tmp_path: Path) -> Path:
    site = tmp_path / "site"
    source = PROBE.format(site=str(site / "planted.txt"), root=ROOT_TARGET)
    return make_distribution(site, DIST, "0.1.0",
                             entry_points={"apt.providers": {"attention.evil": "evil_attention:EvilAttention"}},
                             modules={"evil_attention.py": source})


@pytest.fixture
def untrusted_env(tmp_path: Path, env: dict[str, str]):
    env["PYTHONPATH"] = str(_site(tmp_path))
    yield env
    Path(ROOT_TARGET).unlink(missing_ok=True)


def _train(name: str, steps: int = 6) -> list[str]:
    return ["train", "-p", "tiny_debug", *SMALL, "--set", "model.attention=evil", "--set", f"train.max_iters={steps}",
            "--set", "train.eval_interval=3", "--set", "train.log_interval=1", "--set", "checkpoint.every=3",
            "--set", f"checkpoint.dir=runs/{name}"]


def _probe(stdout: str) -> dict[str, object]:
    lines = [line for line in stdout.splitlines() if line.startswith("evil-attention probe ")]
    assert lines, stdout
    return json.loads(lines[0].removeprefix("evil-attention probe "))


def _losses(run_dir: Path) -> list[float]:
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [e["loss"] for e in events if e.get("event") == "step"]


def test_untrusted_plugin_trains_in_the_sandbox_and_its_attacks_fail(tmp_path, untrusted_env):
    result = run(_train("jailed"), env=untrusted_env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"inside apt-sandbox (untrusted: attention.evil from {DIST})" in result.stderr
    report = _probe(result.stdout)
    assert report["socket"] == "EACCES"
    assert report["interfaces"] == ["lo"]
    assert report["write_site"] == "EROFS"
    assert report["write_root"] == "EROFS"
    assert not (tmp_path / "site" / "planted.txt").exists() and not Path(ROOT_TARGET).exists()
    assert "done: finished at step 6" in result.stdout
    run_dir = tmp_path / "runs" / "jailed"
    assert report["link"] == "planted" and not (run_dir / "escape").is_symlink()
    assert f"removed 1 symbolic link(s) the sandboxed run left in {run_dir}" in result.stderr
    owner = os.stat(tmp_path)
    assert {(p.stat().st_uid, p.stat().st_gid) for p in [run_dir, *run_dir.rglob("*")]} == {
        (owner.st_uid, owner.st_gid)}

    text = tmp_path / "held_out.txt"
    text.write_text("the king is dead; long live the king\n")
    evaluated = run(["eval", "--checkpoint", str(run_dir), "--data", str(text), "--json"], env=untrusted_env,
                    cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    assert "inside apt-sandbox" in evaluated.stderr and _probe(evaluated.stdout)["socket"] == "EACCES"
    assert json.loads(evaluated.stdout.splitlines()[-1])["tokens"] > 0
    generated = run(["generate", "--checkpoint", str(run_dir), "--prompt", "the ", "--max-new-tokens", "8"],
                    env=untrusted_env, cwd=tmp_path)
    assert generated.returncode == 0, generated.stderr
    assert "inside apt-sandbox" in generated.stderr and _probe(generated.stdout)["write_root"] == "EROFS"
    if importlib.util.find_spec("fastapi") and importlib.util.find_spec("uvicorn"):
        served = run(["serve", "--checkpoint", str(run_dir), "--port", "0"], env=untrusted_env, cwd=tmp_path)
        assert_one_line_error(served, "apt serve cannot run inside apt-sandbox (it needs the network)")
        assert "evil-attention probe" not in served.stdout


def test_loss_curve_equals_the_in_process_run_once_trusted(tmp_path, untrusted_env):
    jailed = run(_train("jailed"), env=untrusted_env, cwd=tmp_path)
    assert jailed.returncode == 0, jailed.stderr
    trusted = run(["market", "trust", DIST], env=untrusted_env, cwd=tmp_path)
    assert trusted.returncode == 0, trusted.stderr
    local = run([*_train("local"), "--no-sandbox"], env=untrusted_env, cwd=tmp_path)
    assert local.returncode == 0, local.stderr
    assert "apt-sandbox" not in local.stderr
    assert _probe(local.stdout)["write_site"] == "written"
    jailed_losses, local_losses = _losses(tmp_path / "runs" / "jailed"), _losses(tmp_path / "runs" / "local")
    assert len(jailed_losses) == 6
    assert jailed_losses == pytest.approx(local_losses, rel=1e-6, abs=1e-7)


def test_no_sandbox_refuses_an_untrusted_plugin_before_it_runs(tmp_path, untrusted_env):
    result = run([*_train("refused"), "--no-sandbox"], env=untrusted_env, cwd=tmp_path)
    assert_one_line_error(result, f"attention.evil from {DIST} is not trusted")
    assert f"apt market trust {DIST}" in result.stderr
    assert "evil-attention probe" not in result.stdout
    assert not (tmp_path / "runs" / "refused").exists()


def test_without_apt_sandbox_an_untrusted_plugin_is_refused(tmp_path, untrusted_env):
    shadow = tmp_path / "no_sandbox"
    (shadow / "apt_sandbox").mkdir(parents=True)
    (shadow / "apt_sandbox" / "__init__.py").write_text("raise ImportError('apt-sandbox is not installed')\n")
    untrusted_env["PYTHONPATH"] = f"{shadow}{os.pathsep}{untrusted_env['PYTHONPATH']}"
    result = run(_train("refused"), env=untrusted_env, cwd=tmp_path)
    assert_one_line_error(result, "pip install apt-sandbox")
    assert f"apt market trust {DIST}" in result.stderr
    assert "evil-attention probe" not in result.stdout


def test_trust_round_trip(tmp_path, untrusted_env, apt_home):
    assert run(["market", "trust", "Evil_Attention"], env=untrusted_env, cwd=tmp_path).returncode == 0
    assert json.loads((apt_home / "trust.json").read_text()) == {"trusted": [DIST]}
    listed = run(["market", "trusted", "--json"], env=untrusted_env, cwd=tmp_path)
    assert json.loads(listed.stdout)["trusted"] == [DIST]
    untrusted = run(["market", "untrust", DIST], env=untrusted_env, cwd=tmp_path)
    assert untrusted.returncode == 0 and "apt-sandbox" in untrusted.stdout
    assert json.loads((apt_home / "trust.json").read_text()) == {"trusted": []}
    assert_one_line_error(run(["market", "trust", "apt-plugin-tva"], env=untrusted_env, cwd=tmp_path), "first-party")
    refused = run([*_train("after"), "--no-sandbox"], env=untrusted_env, cwd=tmp_path)
    assert_one_line_error(refused, "is not trusted")


def test_sigkill_of_the_parent_ends_the_jail_and_resume_auto_continues(tmp_path, untrusted_env):
    run_dir = tmp_path / "runs" / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "apt", *_train("killed", steps=40)], env=untrusted_env,
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    logged = kill_after_steps(proc, run_dir, 4)
    assert 4 <= logged < 40
    time.sleep(1.0)
    size = (run_dir / "metrics.jsonl").stat().st_size
    time.sleep(2.0)
    assert (run_dir / "metrics.jsonl").stat().st_size == size, "the jail kept training after its parent died"
    resumed = run([*_train("killed", steps=9), "--resume", "auto"], env=untrusted_env, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout and "inside apt-sandbox" in resumed.stderr
    assert "done: finished at step 9" in resumed.stdout


def test_ctrl_c_reaches_the_sandboxed_trainer(tmp_path, untrusted_env):
    run_dir = tmp_path / "runs" / "interrupted"
    proc = subprocess.Popen([sys.executable, "-m", "apt", *_train("interrupted", steps=400)], env=untrusted_env,
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not (metrics.exists() and '"event": "step"' in metrics.read_text()):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted: checkpoint" in out + err and "--resume auto" in out + err


def test_sandbox_flag_jails_a_fully_trusted_run(tmp_path, env):
    result = run(["train", "-p", "tiny_debug", "--sandbox", "--dry-run"], env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "running apt train inside apt-sandbox (--sandbox)" in result.stderr
    assert "plan: 300 steps" in result.stdout
