"""The profiler's table, rebuilt from the Chrome trace ``apt train --profile`` leaves in the run directory.

``apt train --profile`` prints its whole-run table to the terminal only; the trace it writes covers
a window of steps and names every hook and provider pass with ``record_function`` ranges, so the
same rows (time per plugin hook and provider pass, as a share of the window) come back from it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Row:
    name: str
    calls: int
    total_ms: float
    share: float


@dataclass(frozen=True)
class TraceTable:
    path: Path
    window_ms: float
    rows: list[Row]


def read_trace(path: Path) -> TraceTable | str:
    """The table, or a sentence saying why there is none (a damaged trace must not stop the report)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        return f"{path} could not be read ({type(err).__name__}: {err})"
    events = data.get("traceEvents", []) if isinstance(data, dict) else data
    if not isinstance(events, list):
        return f"{path} holds no traceEvents"
    totals: dict[str, list[float]] = {}
    first, last = float("inf"), float("-inf")
    for event in events:
        if not isinstance(event, dict) or event.get("ph") != "X":
            continue
        start, duration = event.get("ts"), event.get("dur")
        if not isinstance(start, (int, float)) or not isinstance(duration, (int, float)):
            continue
        if event.get("cat") == "Trace":
            continue
        first, last = min(first, start), max(last, start + duration)
        if event.get("cat") == "user_annotation":
            row = totals.setdefault(str(event.get("name", "?")), [0, 0.0])
            row[0] += 1
            row[1] += duration / 1e3
    if not totals:
        return f"{path} holds no hook or provider ranges"
    window = (last - first) / 1e3
    rows = [Row(name, int(calls), total, 100.0 * total / window if window > 0 else 0.0)
            for name, (calls, total) in totals.items()]
    return TraceTable(path, window, sorted(rows, key=lambda r: -r.total_ms))
