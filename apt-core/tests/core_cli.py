"""Helpers for every command-line test (core, plugins, end to end): run the real ``apt`` CLI in subprocesses."""

from __future__ import annotations

import contextlib
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

BIN = Path(sys.executable).parent
#: How every apt command reports an error: ``apt: error: ...`` or, for usage, ``apt train: error: ...``.
ERROR_LINE = re.compile(r"^apt( [a-z][a-z-]*)*: error: ")
#: A model small enough to train in seconds on two cores.
SMALL = ["--set", "model.n_layer=1", "--set", "model.d_model=32", "--set", "model.n_head=2",
         "--set", "model.block_size=16", "--set", "train.batch_size=8", "--set", "train.eval_iters=2",
         "--set", "train.warmup_iters=5", "--set", "logging.progress=false"]


def run(args: list[str], *, env: dict[str, str], cwd: Path, timeout: float = 300,
        python: str = sys.executable) -> subprocess.CompletedProcess[str]:
    """Run ``python -m apt ARGS`` and capture its output."""
    return subprocess.run([python, "-m", "apt", *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def assert_one_line_error(result: subprocess.CompletedProcess[str], fragment: str, code: int = 2) -> None:
    assert result.returncode == code, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if ERROR_LINE.match(line)]
    assert len(lines) == 1 and fragment in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def kill_after_steps(proc: subprocess.Popen[bytes], run_dir: Path, steps: int, timeout: float = 240) -> int:
    """SIGKILL a training process once its metrics show ``steps`` steps; returns the steps logged."""
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.exists() and metrics.read_text().count('"event": "step"') >= steps:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return metrics.read_text().count('"event": "step"') if metrics.exists() else 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serving(args: list[str], *, env: dict[str, str], cwd: Path,
            timeout: float = 120) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """``apt serve ARGS`` on a free port of 127.0.0.1 until the block ends; yields its base URL and
    process once /health answers."""
    import httpx

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "apt", "serve", *args, "--port", str(port)],
                            env={**env, "PYTHONUNBUFFERED": "1"}, cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, "the server did not come up"
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        yield base, proc
    finally:
        proc.terminate()
        proc.wait(timeout=30)
