"""Long-lived worker: state persists between calls, crashes are reported and recovered."""

from __future__ import annotations

import pytest

from apt_sandbox import Limits

M = "apt_sandbox_cases"

pytestmark = pytest.mark.usefixtures("host_clean")


def test_worker_keeps_state_between_calls(sb):
    with sb.worker() as w:
        values = [w.call(f"{M}:count").value for _ in range(5)]
        assert w.ping()
    assert values == [1, 2, 3, 4, 5]
    assert w.restarts == 0


def test_output_is_attributed_to_the_call_that_wrote_it(sb):
    with sb.worker() as w:
        first = w.call(f"{M}:hello", None)
        second = w.call(f"{M}:count")
    assert first.stdout == "Hello, world!\n" and first.stderr == "to stderr\n"
    assert second.stdout == "" and second.stderr == ""


def test_error_keeps_the_worker(sb):
    with sb.worker() as w:
        assert w.call(f"{M}:count").value == 1
        assert w.call(f"{M}:fail", "x").status == "error"
        assert w.call(f"{M}:count").value == 2
    assert w.restarts == 0


def test_crash_is_reported_and_the_next_call_restarts(sb):
    with sb.worker() as w:
        assert w.call(f"{M}:count").value == 1
        crashed = w.call(f"{M}:segfault", None)
        assert crashed.status == "killed"
        assert not w.alive
        after = w.call(f"{M}:count")
    assert after.status == "ok"
    assert after.value == 1
    assert w.restarts == 1


def test_timeout_kills_and_restarts(make_sandbox):
    with make_sandbox(Limits(wall_seconds=1.5)).worker() as w:
        assert w.call(f"{M}:sleep", 30).status == "timeout"
        assert w.call(f"{M}:count").value == 1
    assert w.restarts == 1


def test_cpu_budget_is_per_call(make_sandbox):
    with make_sandbox(Limits(cpu_seconds=1, wall_seconds=30)).worker() as w:
        assert w.call(f"{M}:count").value == 1
        res = w.call(f"{M}:cpu_spin", None)
        assert res.status == "cpu"
        assert w.call(f"{M}:count").status == "ok"


def test_memory_error_restarts_the_worker(make_sandbox):
    with make_sandbox(Limits(memory_mb=256, wall_seconds=30)).worker() as w:
        assert w.call(f"{M}:allocate", 400).status == "memory"
        assert w.call(f"{M}:allocate", 10).status == "ok"
    assert w.restarts == 1


def test_output_flood_in_worker(make_sandbox):
    with make_sandbox(Limits(output_kb=128, wall_seconds=30)).worker() as w:
        assert w.call(f"{M}:flood_stdout", None).status == "output_limit"
        assert w.call(f"{M}:count").value == 1


def test_failed_preload_is_reported(sb):
    w = sb.worker(preload=["no_such_module_to_preload"])
    start = w.start()
    assert start.status == "error"
    assert "ModuleNotFoundError" in start.detail
    assert not w.alive


def test_usage_is_counted_per_call(sb):
    with sb.worker() as w:
        big = w.call(f"{M}:allocate", 200)
        small = w.call(f"{M}:count")
    if not big.isolation["cgroup"]:
        pytest.skip(big.isolation_notes["cgroup"])
    assert big.status == small.status == "ok"
    assert big.usage["memory_peak_bytes"] > 200 << 20
    assert small.usage["memory_peak_bytes"] < 100 << 20
    assert small.usage["cpu_s"] < big.usage["cpu_s"]
