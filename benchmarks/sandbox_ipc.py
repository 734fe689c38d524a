"""apt-sandbox IPC benchmarks.

    python benchmarks/sandbox_ipc.py --out benchmarks/results/sandbox.json

Measures (medians of interleaved repeats, raw samples kept in the JSON):
- cold call: ``Sandbox.call`` of a trivial function vs a bare
  ``subprocess.run([python, "-c", ...])``, alternating the two;
- warm round trip: a small JSON call on a long-lived worker (target < 1 ms);
- tensor transfer: a 64 MiB float32 tensor to the worker, from it, and both
  ways (target >= 1 GB/s).  Each result is dropped before the next timing
  starts, so unmapping the previous 64 MiB is not charged to the next transfer;
- hostile header: growth of the parent's peak RSS (VmHWM, reset before each
  try) while a worker answers with a header of ``[{},{},...]`` just under the
  header cap (target < 4x the cap).
This file doubles as the module the sandboxed side imports (``echo``/``make``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))


def echo(args: Any = None, tensors: dict[str, Any] | None = None) -> Any:
    return args if tensors is None else tensors["x"]


def consume(args: Any = None, tensors: dict[str, Any] | None = None) -> int:
    return int(tensors["x"].numel()) if tensors else 0


_made: dict[int, Any] = {}


def make(nbytes: int) -> Any:
    """A filled tensor kept across calls, so the timing is the transfer, not first-touch allocation."""
    import torch

    if nbytes not in _made:
        _made[nbytes] = torch.randn(nbytes // 4)
    return _made[nbytes]


def bomb(nbytes: int) -> None:
    """Answer with a header just under the cap made of empty objects (~30x its size once parsed)."""
    import struct

    rid = json.dumps(sys.modules["__main__"]._REQUEST_ID).encode()
    head = b'{"ok":true,"id":' + rid + b',"value":['
    body = head + b"{}," * ((nbytes - len(head) - 2) // 3) + b"{}]}"
    os.write(4, b"APT1" + struct.pack(">I", len(body)) + body)
    time.sleep(30)


def _median(xs: list[float]) -> float:
    return statistics.median(xs)


def _summary(xs: list[float]) -> dict[str, float]:
    s = sorted(xs)
    return {
        "median": _median(s),
        "p10": s[max(0, int(len(s) * 0.1) - 1)],
        "p90": s[min(len(s) - 1, int(len(s) * 0.9))],
        "n": len(s),
    }


def bench_cold(repeats: int) -> dict[str, Any]:
    from apt_sandbox import Limits, Sandbox

    sb = Sandbox(Limits(wall_seconds=60), python_path=[HERE, *sys.path])
    bare_samples, sandbox_samples, iso = [], [], {}
    for _ in range(2):
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        sb.call("sandbox_ipc:echo", {"x": 1})
    for _ in range(repeats):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import json; json.dumps({'x': 1})"], check=True)
        bare_samples.append(time.perf_counter() - t)
        t = time.perf_counter()
        res = sb.call("sandbox_ipc:echo", {"x": 1})
        sandbox_samples.append(time.perf_counter() - t)
        assert res.status == "ok", res
        iso = res.isolation
    bare, sand = _median(bare_samples), _median(sandbox_samples)
    return {
        "bare_subprocess_s": _summary(bare_samples),
        "sandbox_call_s": _summary(sandbox_samples),
        "overhead_s": sand - bare,
        "ratio": sand / bare,
        "isolation": iso,
        "raw": {"bare_s": bare_samples, "sandbox_s": sandbox_samples},
    }


def bench_warm(calls: int, rounds: int) -> dict[str, Any]:
    from apt_sandbox import Limits, Sandbox

    sb = Sandbox(Limits(wall_seconds=60), python_path=[HERE, *sys.path])
    payload = {"candidates": ["a", "b", "a"], "k": 3}
    samples: list[float] = []
    round_medians = []
    with sb.worker() as w:
        for _ in range(50):
            w.call("sandbox_ipc:echo", payload)
        for _ in range(rounds):
            chunk = []
            for _ in range(calls):
                t = time.perf_counter()
                res = w.call("sandbox_ipc:echo", payload)
                chunk.append(time.perf_counter() - t)
            assert res.status == "ok" and res.value == payload
            samples += chunk
            round_medians.append(_median(chunk))
    return {
        "round_trip_s": _summary(samples),
        "round_medians_s": round_medians,
        "target_s": 0.001,
        "meets_target": _median(samples) < 0.001,
    }


def bench_tensor(size_mib: int, repeats: int) -> dict[str, Any]:
    import torch

    from apt_sandbox import Limits, Sandbox

    nbytes = size_mib * 1024 * 1024
    sb = Sandbox(
        Limits(memory_mb=8192, wall_seconds=120, message_mb=max(512, 4 * size_mib)), python_path=[HERE, *sys.path]
    )
    x = torch.randn(nbytes // 4)
    send, recv, both = [], [], []
    with sb.worker(preload=["torch"]) as w:
        for _ in range(2):
            w.call("sandbox_ipc:echo", None, tensors={"x": x})
        for _ in range(repeats):
            t = time.perf_counter()
            r = w.call("sandbox_ipc:consume", None, tensors={"x": x})
            send.append(time.perf_counter() - t)
            assert r.status == "ok" and r.value == x.numel()
            del r
            t = time.perf_counter()
            r = w.call("sandbox_ipc:make", nbytes)
            recv.append(time.perf_counter() - t)
            assert r.status == "ok" and r.value.numel() * 4 == nbytes
            del r
            t = time.perf_counter()
            r = w.call("sandbox_ipc:echo", None, tensors={"x": x})
            both.append(time.perf_counter() - t)
            assert r.status == "ok" and torch.equal(r.value, x)
            del r
    gb = nbytes / 1e9
    return {
        "tensor_bytes": nbytes,
        "to_worker_s": _summary(send),
        "from_worker_s": _summary(recv),
        "round_trip_s": _summary(both),
        "to_worker_GBps": gb / _median(send),
        "from_worker_GBps": gb / _median(recv),
        "round_trip_GBps": 2 * gb / _median(both),
        "target_GBps": 1.0,
        "meets_target": gb / _median(send) >= 1.0 and gb / _median(recv) >= 1.0,
        "raw": {"to_worker_s": send, "from_worker_s": recv, "round_trip_s": both},
    }


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def bench_hostile_header(repeats: int) -> dict[str, Any]:
    from apt_sandbox import Limits, Sandbox
    from apt_sandbox.ipc import HEADER_CAP

    sb = Sandbox(Limits(wall_seconds=60), python_path=[HERE, *sys.path])
    sb.call("sandbox_ipc:echo", None)
    growth, seconds, detail = [], [], ""
    for _ in range(repeats):
        base = _status_kb("VmRSS")
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        t = time.perf_counter()
        res = sb.call("sandbox_ipc:bomb", HEADER_CAP - 64)
        seconds.append(time.perf_counter() - t)
        growth.append((_status_kb("VmHWM") - base) * 1024)
        assert res.status == "error", res
        detail = res.detail
    return {
        "header_cap_bytes": HEADER_CAP,
        "peak_rss_growth_bytes": {"max": max(growth), "median": _median(growth), "n": len(growth)},
        "call_s": _summary(seconds),
        "detail": detail,
        "target_bytes": 4 * HEADER_CAP,
        "meets_target": max(growth) < 4 * HEADER_CAP,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(HERE, "results", "sandbox.json"))
    parser.add_argument("--cold-repeats", type=int, default=21)
    parser.add_argument("--warm-calls", type=int, default=500)
    parser.add_argument("--warm-rounds", type=int, default=5)
    parser.add_argument("--tensor-mib", type=int, default=64)
    parser.add_argument("--tensor-repeats", type=int, default=15)
    parser.add_argument("--hostile-repeats", type=int, default=5)
    ns = parser.parse_args(argv)

    from apt_sandbox import check

    results: dict[str, Any] = {
        "benchmark": "apt-sandbox IPC",
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "euid": os.geteuid(),
        },
        "isolation": check(),
    }
    results["cold_call"] = bench_cold(ns.cold_repeats)
    results["warm_worker"] = bench_warm(ns.warm_calls, ns.warm_rounds)
    results["hostile_header"] = bench_hostile_header(ns.hostile_repeats)
    try:
        import torch  # noqa: F401
    except ImportError:
        results["tensor_transfer"] = {"skipped": "torch is not installed"}
    else:
        results["tensor_transfer"] = bench_tensor(ns.tensor_mib, ns.tensor_repeats)
    os.makedirs(os.path.dirname(os.path.abspath(ns.out)), exist_ok=True)
    tmp = ns.out + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(results, fh, indent=2)
    os.replace(tmp, ns.out)
    cold, warm, tensor = results["cold_call"], results["warm_worker"], results["tensor_transfer"]
    cold_ms = cold["sandbox_call_s"]["median"] * 1e3
    bare_ms = cold["bare_subprocess_s"]["median"] * 1e3
    print(f"cold: sandbox {cold_ms:.1f} ms vs bare {bare_ms:.1f} ms")
    print(f"warm round trip: {warm['round_trip_s']['median'] * 1e6:.0f} us")
    hostile = results["hostile_header"]
    print(
        f"hostile header: parent peak RSS +{hostile['peak_rss_growth_bytes']['max'] / 2**20:.1f} MiB "
        f"(cap {hostile['header_cap_bytes'] / 2**20:.0f} MiB, target < 4x)"
    )
    if "to_worker_GBps" in tensor:
        print(
            f"tensor {ns.tensor_mib} MiB: to {tensor['to_worker_GBps']:.2f} GB/s, "
            f"from {tensor['from_worker_GBps']:.2f} GB/s, round trip {tensor['round_trip_GBps']:.2f} GB/s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
