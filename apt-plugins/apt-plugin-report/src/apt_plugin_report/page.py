"""The HTML page: sections of inline SVG charts and tables, styled inline, with no script at all.

Everything the browser needs is in the one file, so the page opens from disk, offline, years later;
every text that came from a run (names, messages, tracebacks) is escaped.
"""

from __future__ import annotations

import html
import math
import statistics
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from apt_plugin_report import __version__, plots, series
from apt_plugin_report.flops import Peak, flops_per_token
from apt_plugin_report.plots import Line
from apt_plugin_report.runs import Run
from apt_plugin_report.trace_table import TraceTable

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2rem auto;max-width:70rem;color:#222;
padding:0 1rem}
h1{font-size:1.5rem}h2{font-size:1.15rem;border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2rem}
table{border-collapse:collapse;font-size:.85rem;margin:.5rem 0}
td,th{border:1px solid #ddd;padding:.2rem .5rem;text-align:left;vertical-align:top}
th{background:#f4f4f4}td.n{text-align:right;font-variant-numeric:tabular-nums}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(30rem,1fr));gap:.5rem 1rem}
figure.plot{margin:.5rem 0}figure.plot svg{max-width:100%;height:auto}
.note{color:#666;font-size:.85rem}pre{font-size:.75rem;white-space:pre-wrap;background:#f8f8f8;padding:.4rem}
"""
#: Flag changes and plugin messages listed per run; the heatmap shows them all, the first ones matter most.
FLAG_ROWS = 200
#: Longest message shown in the errors table; the whole one is in its details.
_MESSAGE_CHARS = 300


@dataclass
class Inputs:
    """Everything the page shows, gathered before any drawing."""

    runs: list[Run]
    peak: Peak | None
    #: Per run name: its error records, or a sentence saying why none could be listed.
    errors: dict[str, list[dict[str, Any]] | str] = field(default_factory=dict)
    #: Per run name: its profiler table, or why there is none.
    traces: dict[str, TraceTable | str] = field(default_factory=dict)


def render(inputs: Inputs) -> str:
    runs = inputs.runs
    title = runs[0].name + (f" vs {', '.join(r.name for r in runs[1:])}" if len(runs) > 1 else "")
    parts = [f"<h1>Training report: {_e(title)}</h1>",
             f'<p class="note">written {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC} by apt report '
             f"(apt-plugin-report {__version__}); x axes are optimizer steps; dotted verticals mark curriculum "
             f"switches.</p>",
             _summary(inputs), _curves(inputs), _per_layer(runs), _messages(runs), _curriculum(runs), _samples(runs),
             _profiles(inputs), _errors(inputs)]
    body = "\n".join(p for p in parts if p)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_e(title)} - apt report</title>'
            f"<style>{_CSS}</style></head><body>\n{body}\n</body></html>\n")


def mfu_series(run: Run, peak: Peak | None) -> tuple[list[int], list[float]] | None:
    """MFU in percent per step, None without a checkpoint (architecture) or a peak."""
    if run.checkpoint is None or peak is None or peak.flops <= 0:
        return None
    per_token = flops_per_token(run.checkpoint.n_params, run.checkpoint.profile.get("model", {}))
    xs, rates = series.curve(run.steps, "tokens_per_s")
    return xs, [100.0 * r * per_token / peak.flops for r in rates]


def _summary(inputs: Inputs) -> str:
    head = ["run", "steps", "last loss", "best val loss", "parameters", "FLOPs/token",
            "median tokens/s", "median MFU"]
    rows = []
    for run in inputs.runs:
        ckpt = run.checkpoint
        last_loss = _last(series.curve(run.steps, "loss")[1])
        vals = [v for v in series.curve(run.evals, "val_loss")[1] if math.isfinite(v)]
        rates = [v for v in series.curve(run.steps, "tokens_per_s")[1] if math.isfinite(v)]
        mfu = mfu_series(run, inputs.peak)
        mfu_values = [v for v in mfu[1] if math.isfinite(v)] if mfu else []
        per_token = flops_per_token(ckpt.n_params, ckpt.profile.get("model", {})) if ckpt else None
        rows.append([run.name, str(int(run.steps[-1]["step"])),
                     _num(last_loss), _num(min(vals) if vals else None), f"{ckpt.n_params:,}" if ckpt else "unknown",
                     f"{per_token:.3g}" if per_token else "unknown",
                     f"{statistics.median(rates):,.0f}" if rates else "-",
                     f"{statistics.median(mfu_values):.2f}%" if mfu_values else "-"])
    notes = []
    for run in inputs.runs:
        note = f"{run.name}: {run.path}, run id {run.run_id or 'unknown'}; "
        if run.checkpoint is None:
            note += f"{run.checkpoint_note} (architecture, MFU and errors need one)."
        else:
            model = run.checkpoint.profile.get("model", {})
            providers = ", ".join(f"{k} {v.get('name', '?')}" for k, v in run.checkpoint.providers.items()
                                  if isinstance(v, dict))
            note += ", ".join(f"{k}={model.get(k)}" for k in ("n_layer", "n_head", "d_model", "block_size")) \
                + (f"; {providers}" if providers else "") + f" (from {run.checkpoint.path.name})."
        if run.bad_lines:
            note += f" {run.bad_lines} unreadable line(s) in metrics.jsonl skipped."
        notes.append(note)
    if inputs.peak is not None:
        notes.append(f"MFU = tokens/s x (6N + 12 n_layer d_model block_size) / peak, peak {inputs.peak.flops:.3g} "
                     f"FLOP/s ({inputs.peak.source}); N counts every parameter (with a mixture of experts, "
                     f"inactive experts too).")
    return "<h2>Summary</h2>" + _table(head, rows, numeric=set(range(1, len(head)))) + "".join(
        f'<p class="note">{_e(n)}</p>' for n in notes)


def _curves(inputs: Inputs) -> str:
    runs = inputs.runs
    switches = series.switches(runs[0].epochs) if len(runs) == 1 else []
    many = len(runs) > 1

    def label(run: Run, what: str) -> str:
        return f"{run.name} {what}" if many else what

    loss, ppl, lr, speed, mfu, grad = [], [], [], [], [], []
    for i, run in enumerate(runs):
        colour = plots.run_colour(i)
        loss.append(Line(label(run, "train (step)"), *series.curve(run.steps, "loss"), colour, faint=True))
        loss.append(Line(label(run, "train (eval)"), *series.curve(run.evals, "train_loss"), colour, markers=True))
        loss.append(Line(label(run, "val"), *series.curve(run.evals, "val_loss"), colour, dashed=True, markers=True))
        ppl.append(Line(label(run, "val"), *series.curve(run.evals, "val_ppl"), colour, dashed=True, markers=True))
        xs, train = series.curve(run.evals, "train_loss")
        ppl.append(Line(label(run, "train"), xs, [math.exp(min(v, 50.0)) for v in train], colour, markers=True))
        lr.append(Line(label(run, "lr"), *series.curve(run.steps, "lr"), colour))
        speed.append(Line(label(run, "tokens/s"), *series.curve(run.steps, "tokens_per_s"), colour))
        grad.append(Line(label(run, "grad norm"), *series.curve(run.steps, "grad_norm"), colour))
        run_mfu = mfu_series(run, inputs.peak)
        if run_mfu is not None:
            mfu.append(Line(label(run, "MFU"), *run_mfu, colour))
    charts = [("Loss", plots.line_chart("Loss", "cross-entropy", loss, switches=switches)),
              ("Perplexity", plots.line_chart("Perplexity", "perplexity", ppl, switches=switches, log_y=True)),
              ("Learning rate", plots.line_chart("Learning rate", "lr", lr, switches=switches)),
              ("Throughput", plots.line_chart("Throughput", "tokens/s", speed, switches=switches))]
    if mfu and inputs.peak is not None:
        charts.append(("MFU", plots.line_chart("Model FLOPs utilisation", "% of peak", mfu, switches=switches,
                                               note=f"peak {inputs.peak.flops:.3g} FLOP/s, {inputs.peak.source}")))
    if any(line.xs for line in grad):
        charts.append(("Gradient norm", plots.line_chart("Gradient norm (total, before clipping)", "L2 norm", grad,
                                                         switches=switches, log_y=True)))
    return "<h2>Curves</h2>" + _grid(svg for _, svg in charts) + _plugin_scalars(runs, switches)


def _plugin_scalars(runs: Sequence[Run], switches: Sequence[series.Switch]) -> str:
    groups: dict[str, list[str]] = {}
    for run in runs:
        for group, keys in series.plugin_scalars(run.steps).items():
            known = groups.setdefault(group, [])
            known.extend(k for k in keys if k not in known)
    if not groups:
        return ""
    figures = []
    for group, keys in groups.items():
        lines = []
        for i, run in enumerate(runs):
            for j, key in enumerate(keys):
                xs, ys = series.curve(run.steps, key)
                if xs:
                    name = f"{run.name} {key}" if len(runs) > 1 else key
                    lines.append(Line(name, xs, ys, plots.run_colour(i if len(runs) > 1 else j), dashed=j % 2 == 1))
        title = ", ".join(keys) if len(keys) <= 3 else f"{group}: {len(keys)} metrics"
        figures.append(plots.line_chart(title, group, lines, switches=switches))
    return "<h2>Plugin metrics</h2>" + _grid(figures)


def _per_layer(runs: Sequence[Run]) -> str:
    out = []
    for run in runs:
        changes = series.flag_changes(run.steps)
        switches = series.switches(run.epochs)
        found = series.families(run.steps)
        for family in found:
            flags = series.raised_flags([c for c in changes if c.row in family.values
                                         and _carries_flags(family, found, c.family)])
            title = f"{family.name} per row" + (f" ({run.name})" if len(runs) > 1 else "")
            out.append(_figure(plots.heatmap(family, flags=flags, switches=switches, title=title)))
        if changes:
            rows = [[str(c.step), c.family, c.row, c.before or "-", c.after or "cleared"]
                    for c in changes[:FLAG_ROWS]]
            more = (f'<p class="note">{len(changes) - FLAG_ROWS} later changes are in {_e(str(run.path))}'
                    f"/metrics.jsonl.</p>" if len(changes) > FLAG_ROWS else "")
            out.append(f"<h3>Flag changes{_e(f' ({run.name})') if len(runs) > 1 else ''}</h3>"
                       + _table(["step", "family", "layer", "before", "after"], rows, numeric={0}) + more)
    if not out:
        return ""
    return "<h2>Per-layer metrics</h2>" + '<p class="note">One row per layer of keys such as ' \
        "monitor/grad/&lt;layer&gt; or monitor.grad_norm.&lt;layer&gt;, and per entry of list- or mapping-valued " \
        "keys; colour is log-scaled when values span more than 20x; raised flags are bars across the cells.</p>" \
        + "\n".join(out)


def _carries_flags(family: series.Family, found: Sequence[series.Family], flag_family: str) -> bool:
    """Flags are about gradients, so they go on the plugin's gradient heatmap (else on its first one),
    not on its weight or update heatmaps too."""
    mine = [f.name for f in found if series.top(f.name) == series.top(flag_family)]
    grads = [name for name in mine if "grad" in name.lower()]
    return family.name in (grads or mine[:1])


def _messages(runs: Sequence[Run]) -> str:
    rows = [[run.name, str(step), key, text] for run in runs for step, key, text in series.messages(run.steps)]
    if not rows:
        return ""
    shown = rows[:FLAG_ROWS]
    more = f'<p class="note">{len(rows) - len(shown)} more in metrics.jsonl.</p>' if len(rows) > len(shown) else ""
    return "<h2>Plugin messages</h2>" + _table(["run", "step", "key", "text"], shown, numeric={1}) + more


def _curriculum(runs: Sequence[Run]) -> str:
    rows = [[run.name, str(s.step), s.name, "on" if s.on else "off"] for run in runs for s in series.switches(run.epochs)]
    if not rows:
        return ""
    return "<h2>Curriculum switches</h2>" + _table(["run", "after step", "switch", "turned"], rows, numeric={1})


def _samples(runs: Sequence[Run]) -> str:
    rows = [[run.name, str(step), key, text] for run in runs for step, key, text in series.eval_samples(run.evals)]
    if not rows:
        return ""
    return "<h2>Eval samples</h2>" + _table(["run", "step", "field", "text"], rows, numeric={1}, pre={3})


def _profiles(inputs: Inputs) -> str:
    out = []
    for run in inputs.runs:
        table = inputs.traces.get(run.name)
        if table is None:
            continue
        heading = f"<h3>{_e(run.name)}</h3>" if len(inputs.runs) > 1 else ""
        if isinstance(table, str):
            out.append(f'{heading}<p class="note">{_e(table)}</p>')
            continue
        rows = [[r.name, str(r.calls), f"{r.total_ms:.2f}", f"{r.total_ms / max(1, r.calls):.3f}", f"{r.share:.1f}%"]
                for r in table.rows]
        out.append(heading + f'<p class="note">From {_e(str(table.path))}: the steps of the Chrome trace '
                   f"(a {table.window_ms:.1f} ms window); apt train --profile prints the whole-run table.</p>"
                   + _table(["where", "calls", "total ms", "ms/call", "% of window"], rows, numeric={1, 2, 3, 4}))
    return "<h2>Profile</h2>" + "\n".join(out) if out else ""


def _errors(inputs: Inputs) -> str:
    out = []
    for run in inputs.runs:
        found = inputs.errors.get(run.name)
        heading = f"<h3>{_e(run.name)}</h3>" if len(inputs.runs) > 1 else ""
        if found is None or isinstance(found, str):
            out.append(f'{heading}<p class="note">{_e(found or "no run id: no errors listed")}</p>')
            continue
        if not found:
            out.append(f'{heading}<p class="note">no errors recorded for run {_e(run.run_id or "")}</p>')
            continue
        rows = []
        for err in found:
            message = str(err.get("message", ""))
            detail = f"{message}\n\n{err.get('traceback', '')}".strip()
            rows.append([str(err.get("id")), str(err.get("time", ""))[:19], str(err.get("type", "")),
                         str(err.get("plugin") or "-"), str(err.get("step") if err.get("step") is not None else "-"),
                         _Raw(f"{_e(message[:_MESSAGE_CHARS])}<details><summary>details</summary>"
                              f"<pre>{_e(detail)}</pre></details>"),
                         "yes" if err.get("resolved_at") else "no"])
        out.append(heading + _table(["id", "time (UTC)", "type", "plugin", "step", "message", "resolved"], rows,
                                    numeric={0, 4}))
    return "<h2>Errors</h2>" + "\n".join(out)


class _Raw(str):
    """Table cell HTML that is already escaped."""


def _table(head: Sequence[str], rows: Sequence[Sequence[str]], *, numeric: Collection[int] = (),
           pre: Collection[int] = ()) -> str:
    def cell(i: int, value: str) -> str:
        text = value if isinstance(value, _Raw) else _e(value)
        if i in pre:
            text = f"<pre>{text}</pre>"
        return f'<td class="n">{text}</td>' if i in numeric else f"<td>{text}</td>"

    header = "".join(f"<th>{_e(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(cell(i, v) for i, v in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><thead><tr>{header}</tr></thead><tbody>{body}</tbody></table>"


def _figure(svg: str) -> str:
    return f'<figure class="plot">{svg}</figure>'


def _grid(svgs: Iterable[str]) -> str:
    return '<div class="grid">' + "".join(_figure(svg) for svg in svgs) + "</div>"


def _e(text: str) -> str:
    return html.escape(text, quote=True)


def _last(values: Sequence[float]) -> float | None:
    finite = [v for v in values if math.isfinite(v)]
    return finite[-1] if finite else None


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
