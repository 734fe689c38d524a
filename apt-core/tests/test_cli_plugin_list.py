"""``apt plugin list`` as scripts use it: cheap to start and quiet when its reader goes away."""

import os
import subprocess
import sys

from core_cli import BIN


def test_listing_does_not_import_torch(env):
    code = ("import sys; from apt.cli import main; main(['plugin', 'list']); "
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip().endswith("NO-TORCH"), out.stdout + out.stderr


def test_piped_into_head_it_prints_the_first_line_and_no_traceback(tmp_path, env):
    piped = subprocess.run(["sh", "-c", f"'{BIN / 'apt'}' plugin list 2>apt.err | head -1"], env=env, cwd=tmp_path,
                           capture_output=True, text=True, timeout=60)
    assert piped.stdout.split()[:3] == ["KIND", "NAME", "VERSION"]
    assert (tmp_path / "apt.err").read_text() == ""


def test_a_reader_gone_before_the_first_write_ends_it_quietly_with_141(tmp_path, env):
    """The deterministic case of ``| head -1``: the pipe is already closed when apt writes."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        out = subprocess.run([str(BIN / "apt"), "plugin", "list"], env=env, cwd=tmp_path, stdout=write_end,
                             stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(write_end)
    assert out.stderr == ""
    assert out.returncode == 141
