"""``apt tune --report``: the leaderboard as text and an HTML page that opens without a network.

The plots are Optuna's own (plotly); plotly.js is embedded once in the page instead of loaded
from a CDN, so the report works on an air-gapped cluster and as a CI artifact.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from apt import AptError, atomic_write

REPORT = "report.html"
STATE = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed",
         TrialState.RUNNING: "running", TrialState.WAITING: "waiting"}


def _loss(t: FrozenTrial) -> float | None:
    if t.state == TrialState.COMPLETE:
        return t.value
    if t.intermediate_values:
        return t.intermediate_values[max(t.intermediate_values)]
    return None


def _order(t: FrozenTrial) -> tuple[int, float, int]:
    rank = {TrialState.COMPLETE: 0, TrialState.PRUNED: 1}.get(t.state, 2)
    loss = _loss(t)
    return rank, loss if loss is not None and math.isfinite(loss) else math.inf, t.number


def rows(study: optuna.Study) -> list[list[str]]:
    """Leaderboard rows, best first: complete by val loss, then pruned, then the rest."""
    out = []
    everything = study.get_trials(deepcopy=False)
    retried = {t.user_attrs["retry_of"]: t.number for t in everything if isinstance(t.user_attrs.get("retry_of"), int)}
    for t in sorted(everything, key=_order):
        loss = _loss(t)
        step = max(t.intermediate_values) if t.intermediate_values else None
        took = (t.datetime_complete - t.datetime_start).total_seconds() \
            if t.datetime_complete and t.datetime_start and t.number not in retried else None
        values = t.params or t.system_attrs.get("fixed_params") or {}
        params = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())
        note = t.user_attrs.get("error") or t.user_attrs.get("invalid") or ""
        if t.number in retried and t.state == TrialState.FAIL:
            note = f"stopped by a dead or interrupted worker; retried as trial {retried[t.number]}"
        out.append([str(t.number), STATE.get(t.state, t.state.name.lower()),
                    "" if loss is None else f"{loss:.4f}", "" if step is None else str(step),
                    "" if took is None else f"{took:.0f}s", params + (f"  ({note})" if note else "")])
    return out


HEADER = ["trial", "state", "val loss", "step", "time", "parameters"]


def leaderboard(study: optuna.Study) -> str:
    table = [HEADER, *rows(study)]
    widths = [max(len(r[i]) for r in table) for i in range(len(HEADER) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1]
                     for r in table)


def write_html(study: optuna.Study, path: Path) -> list[str]:
    """The report page; returns the plots that could not be drawn (too few finished trials), by title."""
    from optuna import visualization as vis
    from optuna.importance import PedAnovaImportanceEvaluator

    plots: list[tuple[str, Callable[[], Any]]] = [
        ("Optimisation history", lambda: vis.plot_optimization_history(study)),
        ("Parameter importances", lambda: vis.plot_param_importances(study, evaluator=PedAnovaImportanceEvaluator())),
        ("Parallel coordinates", lambda: vis.plot_parallel_coordinate(study)),
    ]
    sections, missing, embedded = [], [], False
    for title, plot in plots:
        try:
            figure = plot()
            body = figure.to_html(full_html=False, include_plotlyjs=not embedded)
            embedded = True
        except Exception as err:
            missing.append(title)
            body = f"<p>not drawn: {html.escape(str(err) or type(err).__name__)}</p>"
        sections.append(f"<h2>{html.escape(title)}</h2>\n{body}")
    cells = "\n".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows(study))
    head = "".join(f"<th>{h}</th>" for h in HEADER)
    name = html.escape(study.study_name)
    page = (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>apt tune: {name}</title>\n"
            "<style>body{font-family:sans-serif;margin:2em} table{border-collapse:collapse} "
            "td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}</style></head><body>\n"
            f"<h1>apt tune study {name}</h1>\n<h2>Leaderboard</h2>\n<table><tr>{head}</tr>\n{cells}</table>\n"
            + "\n".join(sections) + "\n</body></html>\n")
    atomic_write(path, lambda f: f.write(page.encode("utf-8")))
    return missing


def run_report(study_name: str, study_dir: Path, url: str | None) -> int:
    from apt_plugin_tune.storage import JOURNAL, describe, open_storage
    from apt_plugin_tune.study import quiet_optuna

    quiet_optuna()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    if url is None and not (study_dir / JOURNAL).exists():
        raise AptError(f"no study at {study_dir}: run apt tune -p PROFILE --trials N first, or pass --dir/--storage")
    try:
        study = optuna.load_study(study_name=study_name, storage=open_storage(url, study_dir, 1))
    except KeyError:
        raise AptError(f"no study named {study_name!r} in {describe(url, study_dir)}: check --study") from None
    print(leaderboard(study))
    study_dir.mkdir(parents=True, exist_ok=True)
    path = study_dir / REPORT
    missing = write_html(study, path)
    print(f"report: {path}" + (f" (not drawn: {', '.join(missing)}; too few finished trials)" if missing else ""))
    return 0
