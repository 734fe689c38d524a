"""The package walls: the client runs without the server extra, and neither the server nor
the archive code imports apt-core. Each check runs in a fresh interpreter, since this test
session has long imported everything."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import apt_marketplace

_SERVER_ONLY = ("fastapi", "uvicorn", "starlette")


def _python(code: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {"APT_HOME": str(home), "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                          timeout=120, cwd=home.parent)


def _without_server(argv: list[str]) -> str:
    return f"""
        import sys
        for name in {_SERVER_ONLY!r}:
            sys.modules[name] = None
        from apt_marketplace.cli import main
        code = main({argv!r})
        leaked = sorted(m for m in sys.modules if m.split(".")[0] in {_SERVER_ONLY!r} and sys.modules[m] is not None)
        print("leaked:", leaked)
        sys.exit(code)
    """


def test_serve_without_the_server_extra_names_it_in_one_line(tmp_path: Path) -> None:
    proc = _python(_without_server(["serve", "--data-dir", str(tmp_path / "data")]), tmp_path / "home")
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("apt market: error: "), proc.stderr
    assert "pip install 'apt-marketplace[server]'" in lines[0]
    assert not (tmp_path / "data").exists()


def test_client_commands_run_without_the_server_extra(tmp_path: Path) -> None:
    for argv in (["--help"], ["list"], ["history", "--json"]):
        proc = _python(_without_server(argv), tmp_path / "home")
        assert proc.returncode == 0, (argv, proc.stdout, proc.stderr)
        assert "leaked: []" in proc.stdout


def test_server_and_archive_code_do_not_import_apt_core(tmp_path: Path) -> None:
    root = Path(apt_marketplace.__file__).parent
    modules = sorted(
        "apt_marketplace." + ".".join(p.relative_to(root).with_suffix("").parts)
        for sub in ("server", "apx")
        for p in (root / sub).glob("*.py")
    )
    proc = _python(
        f"""
        import importlib, json, sys
        for name in {modules!r}:
            importlib.import_module(name)
        print(json.dumps(sorted(m for m in sys.modules if m == "apt" or m.startswith("apt."))))
        """,
        tmp_path / "home",
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []
    assert len(modules) >= 15
