"""Shared benchmark plumbing: interleaved timing, medians of paired ratios, JSON results.

Machines here are shared: a neighbour can slow a 2-thread step 2.7x. So variants are measured
in one process, interleaved (A B A B ...), and compared by the median of per-round ratios,
never by absolute numbers from separate runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"


def arguments(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--out", type=Path, required=True, help="JSON file to write")
    p.add_argument("--rounds", type=int, default=7, help="interleaved rounds per comparison")
    return p


def interleave(variants: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Call each variant once per round, in rotating order; each call returns one measurement."""
    samples: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            samples[name].append(variants[name]())
    return samples


def paired_ratio(samples: dict[str, list[float]], num: str, den: str) -> float:
    """Median over rounds of samples[num][i] / samples[den][i]."""
    return statistics.median(a / b for a, b in zip(samples[num], samples[den]))


def timed(fn: Callable[[], Any], repeat: int = 1) -> float:
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"python": platform.python_version(), "cpus": os.cpu_count(),
                            "platform": platform.platform(), "load_avg_at_start": os.getloadavg()}
    try:
        import torch

        info.update(torch=torch.__version__, threads=torch.get_num_threads())
    except ImportError:
        pass
    return info


def write(path: Path, name: str, results: dict[str, Any]) -> None:
    payload = {"benchmark": name, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "machine": machine(), **results}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, path)
    print(json.dumps(payload, indent=2))
