"""Every shell and Python block of docs/*.md runs, in order, as a reader would run it.

Each page runs in an empty folder with a private APT_HOME and a throwaway copy of the test
environment (hard links, about a second), so the packages a page installs never leak into the
environment the other tests use. Shell blocks run with ``bash -euo pipefail``; Python blocks
run in the copy's interpreter. A background process a block starts is killed with its session.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted((ROOT / "docs").glob("*.md"))
FENCE = re.compile(r"^```(\w+)[^\n]*\n(.*?)^```", re.S | re.M)
LANGUAGES = {"bash": "shell", "sh": "shell", "shell": "shell", "python": "python"}


def blocks(page: Path) -> list[tuple[str, str, int]]:
    """(language, code, line) of every runnable block; other fences (toml, text) are shown only."""
    text = page.read_text(encoding="utf-8")
    found = []
    for match in FENCE.finditer(text):
        language = LANGUAGES.get(match.group(1))
        if language:
            found.append((language, match.group(2), text.count("\n", 0, match.start()) + 1))
    return found


def clone_environment(dest: Path) -> Path:
    """A copy of the running virtual environment whose commands run the copy's interpreter.

    Console scripts keep the original interpreter in their shebang, so the copy gets a folder
    of shims (``apt``, ``pip``, ``python``) placed first on PATH; returns that folder.
    """
    prefix = Path(sys.prefix)
    if prefix == Path(sys.base_prefix):
        pytest.skip("needs to run inside a virtual environment")
    env_dir = dest / "env"
    shutil.copytree(prefix, env_dir, symlinks=True, copy_function=os.link)
    shims = dest / "shims"
    shims.mkdir()
    python = env_dir / "bin" / "python"
    for name, command in {"apt": f'"{python}" -m apt', "pip": f'"{python}" -m pip', "python": f'"{python}"',
                          "python3": f'"{python}"'}.items():
        shim = shims / name
        shim.write_text(f'#!/bin/sh\nexec {command} "$@"\n')
        shim.chmod(0o755)
    return shims


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_page_runs(page: Path, tmp_path: Path) -> None:
    runnable = blocks(page)
    assert runnable, f"{page.name} has no runnable blocks"
    shims = clone_environment(tmp_path / "venv")
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PATH": f"{shims}{os.pathsep}{tmp_path / 'venv' / 'env' / 'bin'}{os.pathsep}"
                                 f"{os.environ.get('PATH', '')}",
           "APT_HOME": str(tmp_path / "apt_home"), "PYTHONUNBUFFERED": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env.pop("PYTHONPATH", None)
    env.pop("VIRTUAL_ENV", None)
    sessions: list[int] = []
    try:
        for language, code, line in runnable:
            command = (["bash", "-euo", "pipefail", "-c", code] if language == "shell"
                       else [str(tmp_path / "venv" / "env" / "bin" / "python"), "-c", code])
            proc = subprocess.Popen(command, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, text=True, start_new_session=True)
            sessions.append(proc.pid)
            try:
                output, _ = proc.communicate(timeout=600)
            except subprocess.TimeoutExpired:
                proc.kill()
                output, _ = proc.communicate()
            assert proc.returncode == 0, (f"{page.name}:{line}: the {language} block failed "
                                          f"(exit {proc.returncode}):\n{code}\n--- output ---\n{output[-4000:]}")
    finally:
        for pgid in sessions:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_guide_is_linked_from_the_readme() -> None:
    assert "docs/writing-a-provider.md" in (ROOT / "README.md").read_text(encoding="utf-8")


def test_blocks_are_found_with_their_lines(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# t\n\n```bash\necho hi\n```\n\n```toml\n[x]\n```\n\n```python\nprint(1)\n```\n")
    assert blocks(page) == [("shell", "echo hi\n", 3), ("python", "print(1)\n", 11)]


def test_guide_shows_the_provider_the_kit_writes() -> None:
    from apt.scaffold import render

    written = render("ffn", "geglu")["src/apt_plugin_geglu/provider.py"].strip()
    shown = [code for language, code, _ in blocks(ROOT / "docs" / "writing-a-provider.md") if "class GegluProvider" in code]
    assert len(shown) == 1 and shown[0].startswith(written), "update the guide's copy of the scaffolded provider"
