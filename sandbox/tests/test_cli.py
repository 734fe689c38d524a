"""``apt sandbox`` / ``python -m apt_sandbox`` command line."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

from apt_sandbox.cli import main

TESTS_DIR = str(Path(__file__).resolve().parent)


def test_entry_point_is_registered():
    eps = entry_points(group="apt.commands")
    assert any(ep.name == "sandbox" and ep.value == "apt_sandbox.cli:main" for ep in eps)


def test_run_prints_json_and_exits_zero(capsys):
    code = main(
        [
            "run",
            "apt_sandbox_cases:echo",
            "--json",
            '{"candidates": ["a", "b", "a"]}',
            "--path",
            TESTS_DIR,
            "--wall-seconds",
            "30",
        ]
    )
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert out["status"] == "ok"
    assert out["value"] == {"candidates": ["a", "b", "a"]}
    assert "seccomp" in out["isolation"]


def test_run_failure_exits_one(capsys):
    code = main(["run", "apt_sandbox_cases:fail", "--json", '"x"', "--path", TESTS_DIR])
    out = json.loads(capsys.readouterr().out)
    assert code == 1
    assert out["status"] == "error"
    assert "FAIL x" in out["traceback"]


def test_bad_input_is_one_line_and_exit_two(capsys):
    cases = [
        ["run", "no_colon_here"],
        ["run", "m:f", "--json", "{not json"],
        ["run", "m:f", "--memory-mb", "-5"],
        ["run", "m:f", "--require", "warp_drive"],
        ["frobnicate"],
        [],
    ]
    for argv in cases:
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 2, argv
        lines = err.strip().splitlines()
        assert len(lines) == 1, (argv, err)
        assert lines[0].startswith("apt sandbox: error: "), err
        assert "Traceback" not in err


def test_check_lists_every_layer(capsys):
    assert main(["check", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {"net_ns", "pid_ns", "mount_ns", "user_ns", "seccomp", "uid_drop"} <= set(report["isolation"])
    assert main(["check"]) == 0
    text = capsys.readouterr().out
    assert "seccomp" in text and "pid_ns" in text


def test_python_dash_m_uses_the_same_main():
    proc = subprocess.run(
        [sys.executable, "-m", "apt_sandbox", "run", "apt_sandbox_cases:no_args", "--path", TESTS_DIR],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["value"] == "called without arguments"
    bad = subprocess.run([sys.executable, "-m", "apt_sandbox", "run"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2
    assert bad.stderr.startswith("apt sandbox: error:")


def test_validate_command(tmp_path, capsys):
    site = tmp_path / "site"
    (site / "tiny_plugin").mkdir(parents=True)
    (site / "tiny_plugin" / "__init__.py").write_text(
        "from apt.hookspecs import hookimpl\n\n@hookimpl\ndef apt_train_start(trainer):\n    pass\n")
    info = site / "apt_plugin_tiny-0.0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: apt-plugin-tiny\nVersion: 0.0.1\n")
    (info / "entry_points.txt").write_text("[apt.plugins]\ntiny = tiny_plugin\n")
    assert main(["validate", str(site), "apt-plugin-tiny"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True
    assert report["entries"][0]["detail"] == "hooks match apt.hookspecs"
    assert main(["validate", str(tmp_path / "missing"), "apt-plugin-tiny"]) == 2
    assert capsys.readouterr().err.startswith("apt sandbox: error: SITE_DIR")
