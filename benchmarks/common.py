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
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from apt.timing import interleave, paired_ratio

__all__ = ["SHARED_DATA", "arguments", "interleave", "paired_ratio", "timed", "write"]

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"


def arguments(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--out", type=Path, required=True, help="JSON file to write")
    p.add_argument("--rounds", type=int, default=7, help="interleaved rounds per comparison")
    return p


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
