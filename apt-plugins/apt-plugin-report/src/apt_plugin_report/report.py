"""Gather a report's inputs (runs, peak FLOPs, errors, profiler tables) and write the page atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from apt import atomic_write
from apt_plugin_report.flops import Peak, given_peak, measured_peak
from apt_plugin_report.page import Inputs, render
from apt_plugin_report.runs import Run, load_run
from apt_plugin_report.trace_table import read_trace

#: Errors listed per run; the store keeps every one (apt errors list --run ID shows the rest).
ERROR_LIMIT = 200


def write_report(run_dirs: list[Path], out: Path, *, peak_flops: float | None = None,
                 device: str = "auto") -> Path:
    """Write the report of ``run_dirs`` (the first is the main run, the others overlay it) to ``out``."""
    runs = [load_run(path) for path in run_dirs]
    _name_uniquely(runs)
    inputs = Inputs(runs=runs, peak=_peak(runs, peak_flops, device))
    for run in runs:
        inputs.errors[run.name] = run_errors(run)
        if run.trace_path is not None:
            inputs.traces[run.name] = read_trace(run.trace_path)
    page = render(inputs)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda f: f.write(page.encode("utf-8")))
    return out


def run_errors(run: Run) -> list[dict[str, Any]] | str:
    """The error store's records of the run, or why there are none to show."""
    if run.run_id is None:
        return f"{run.checkpoint_note}: the run id (which the error store files errors under) is unknown"
    from apt import ErrorStore

    try:
        return ErrorStore().list(run_id=run.run_id, limit=ERROR_LIMIT)
    except Exception as err:  # an unreadable store must not cost the user the rest of the report
        return f"the error store could not be read ({type(err).__name__}: {err})"


def _peak(runs: list[Run], given: float | None, device: str) -> Peak | None:
    if given is not None:
        return given_peak(given)
    first = next((r.checkpoint for r in runs if r.checkpoint is not None), None)
    if first is None:
        return None
    train = first.profile.get("train", {})
    return measured_peak(device, precision=str(train.get("precision", "fp32")), threads=train.get("threads"))


def _name_uniquely(runs: list[Run]) -> None:
    """Runs compared from different folders often share a name (``runs/a/tiny_debug``, ``runs/b/tiny_debug``)."""
    seen: dict[str, int] = {}
    for run in runs:
        count = seen.get(run.name, 0)
        seen[run.name] = count + 1
        if count:
            run.name = f"{run.name} ({run.path.resolve().parent.name}/{count + 1})"
