"""Long jobs: a directory granted read-write, output streamed live, Ctrl-C passed on, death with the parent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from apt_sandbox.sandbox import SANDBOX_UIDS

CASES_DIR = str(Path(__file__).resolve().parent)
M = "apt_sandbox_cases"


def sandbox_processes() -> set[int]:
    """Host pids running under a sandbox uid."""
    found = set()
    for name in os.listdir("/proc"):
        try:
            if name.isdigit() and os.stat(f"/proc/{name}").st_uid in SANDBOX_UIDS:
                found.add(int(name))
        except OSError:
            continue
    return found


def test_granted_directory_is_writable_and_given_back(make_sandbox, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    outside = tmp_path / "outside.txt"
    chunks: list[tuple[str, bytes]] = []
    sb = make_sandbox(writable=[run])
    res = sb.call(f"{M}:job_writes", {"dir": str(run), "outside": str(outside), "lines": 3},
                  on_output=lambda stream, data: chunks.append((stream, data)))
    assert res.status == "ok", res
    assert res.value[str(run / "sub" / "out.txt")] == "written"
    assert res.value[str(outside)] != "written"
    assert not outside.exists()
    assert (run / "sub" / "out.txt").read_text() == "escaped"
    owner = os.stat(run)
    assert {(os.lstat(p).st_uid, os.lstat(p).st_gid) for p in (run / "sub", run / "sub" / "out.txt")} == {
        (owner.st_uid, owner.st_gid)}
    assert b"".join(d for s, d in chunks if s == "stdout") == b"line 0\nline 1\nline 2\n"
    assert res.stdout == ""


@pytest.mark.skipif(os.geteuid() != 0, reason="read-only root and uid drop are checked as root")
def test_write_outside_the_granted_directory_fails_on_the_read_only_root(make_sandbox, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    target = os.path.join(CASES_DIR, "planted.txt")
    res = make_sandbox(writable=[run]).call(f"{M}:job_writes", {"dir": str(run), "outside": target, "lines": 0})
    assert res.status == "ok" and res.isolation["ro_root"]
    assert res.value[target] == "OSError"
    assert not os.path.exists(target)


def test_streamed_output_arrives_while_the_job_runs(make_sandbox, tmp_path):
    seen: list[float] = []
    started = time.monotonic()
    res = make_sandbox().call(f"{M}:job_writes",
                              {"dir": str(tmp_path), "outside": "/nonexistent/x", "lines": 3, "pause": 0.5},
                              on_output=lambda s, d: seen.append(time.monotonic() - started))
    assert res.status == "ok"
    assert len(seen) >= 2 and seen[0] < seen[-1] - 0.5


def test_first_interrupt_reaches_the_job(make_sandbox):
    sb = make_sandbox()
    lines: list[bytes] = []

    def on_output(stream: str, data: bytes) -> None:
        lines.append(data)
        if b"ready" in data:
            os.kill(os.getpid(), signal.SIGINT)

    res = sb.call(f"{M}:sleep_until_interrupted", None, on_output=on_output, forward_interrupt=True)
    assert res.status == "ok" and res.value == "interrupted", (res.detail, res.traceback)


def test_sigkill_of_the_parent_ends_the_jail(tmp_path, host_clean):
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {CASES_DIR!r})
        from apt_sandbox import Limits, Sandbox
        sb = Sandbox(Limits(wall_seconds=60), die_with_parent=True, python_path=[{CASES_DIR!r}, *sys.path])
        sb.call("{M}:sleep_until_interrupted", None, on_output=lambda s, d: print(d.decode(), end="", flush=True))
    """))
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None and parent.stdout.readline().strip() == "ready"
    before = sandbox_processes()
    assert before or os.geteuid() != 0
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 10
    while sandbox_processes() & before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not sandbox_processes() & before
