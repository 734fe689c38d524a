from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from apt_sandbox import Limits, Sandbox
from apt_sandbox.sandbox import SANDBOX_UIDS

CASES_DIR = str(Path(__file__).resolve().parent)
M = "apt_sandbox_cases"


def sandbox_processes() -> list[int]:
    """Host pids still running under any uid the sandbox hands out (exited zombies awaiting reaping excluded)."""
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status") as fh:
                fields = dict(line.split(":", 1) for line in fh if ":" in line)
        except OSError:
            continue
        if int(fields.get("Uid", "0").split()[0]) in SANDBOX_UIDS and not fields.get("State", "").strip().startswith(
            "Z"
        ):
            pids.append(int(name))
    return pids


@pytest.fixture
def make_sandbox() -> Callable[..., Sandbox]:
    def factory(limits: Limits | None = None, **kwargs: Any) -> Sandbox:
        limits = limits or Limits(memory_mb=1024, cpu_seconds=20, wall_seconds=30, open_files=64, file_size_mb=16)
        kwargs.setdefault("python_path", [CASES_DIR, *sys.path])
        return Sandbox(limits, **kwargs)

    return factory


@pytest.fixture
def sb(make_sandbox: Callable[..., Sandbox]) -> Sandbox:
    return make_sandbox()


@pytest.fixture
def host_clean() -> Any:
    """Asserts after the test that nothing the sandbox started is still alive on the host.

    A killed tree takes a moment to exit on a loaded machine: allow a bounded grace period.
    """
    yield
    deadline = time.monotonic() + 10
    while sandbox_processes() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sandbox_processes() == []
