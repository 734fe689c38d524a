"""Charts as inline SVG text, drawn with matplotlib's object API (no pyplot, no global backend state).

Text stays text (``svg.fonttype: none``) so the page is small and searchable; heatmaps are one
embedded PNG (a ``data:`` URI inside the SVG) rather than a path per cell, which keeps a 2000-step,
many-layer grid to kilobytes. Nothing in the output refers outside the file.
"""

from __future__ import annotations

import contextlib
import io
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import matplotlib as mpl
import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_svg import FigureCanvasSVG
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure

from apt_plugin_report.series import Family, Switch

_PROLOGUE = re.compile(r"^.*?(?=<svg)", re.S)
_METADATA = re.compile(r"<metadata>.*?</metadata>\s*", re.S)
_FLAG_COLOURS = ("#d62728", "#1f77b4", "#ff7f0e", "#9467bd", "#2ca02c")
#: Points per curve above which buckets keep only their lowest and highest point (SVG size grows per point).
MAX_POINTS = 4000
#: Row labels beyond this many are thinned out so they stay legible.
_MAX_ROW_LABELS = 40


@dataclass(frozen=True)
class Line:
    label: str
    xs: Sequence[float]
    ys: Sequence[float]
    colour: str
    dashed: bool = False
    faint: bool = False
    markers: bool = False


#: One colour per run (matplotlib's tab10), so a run keeps its colour in every chart.
_TAB10 = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
          "#17becf")


def run_colour(index: int) -> str:
    return _TAB10[index % len(_TAB10)]


def line_chart(title: str, ylabel: str, lines: Sequence[Line], *, switches: Sequence[Switch] = (),
               log_y: bool = False, note: str = "") -> str:
    """Curves over steps, curriculum switches as labelled dotted verticals."""
    with _style():
        fig = Figure(figsize=(8.0, 3.2))
        ax = fig.add_subplot()
        for line in lines:
            xs, ys = envelope(line.xs, line.ys)
            ax.plot(xs, ys, label=line.label, color=line.colour, linestyle="--" if line.dashed else "-",
                    linewidth=0.8 if line.faint else 1.6, alpha=0.45 if line.faint else 1.0,
                    marker="o" if line.markers else None, markersize=3)
        if log_y and _wide_positive(lines):
            ax.set_yscale("log")
        _mark_switches(ax, switches)
        ax.set_title(title, loc="left", fontweight="bold")
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        if note:
            fig.text(0.99, 0.01, note, ha="right", va="bottom", fontsize=7, color="0.35")
        if len(lines) > 1:
            ax.legend(fontsize=7, loc="best", frameon=False)
        fig.tight_layout(rect=(0.0, 0.05 if note else 0.0, 1.0, 1.0))
        return _svg(fig)


def envelope(xs: Sequence[float], ys: Sequence[float], limit: int = MAX_POINTS) -> tuple[list[float], list[float]]:
    """At most about ``limit`` points that still show every spike: each bucket keeps its min and max, in order."""
    if len(xs) <= limit:
        return list(xs), list(ys)
    size = math.ceil(2 * len(xs) / limit)
    out_x: list[float] = []
    out_y: list[float] = []
    for start in range(0, len(xs), size):
        bucket = [i for i in range(start, min(start + size, len(xs))) if math.isfinite(ys[i])]
        if not bucket:
            out_x.append(xs[start])
            out_y.append(math.nan)
            continue
        low = min(bucket, key=lambda i: ys[i])
        high = max(bucket, key=lambda i: ys[i])
        for i in sorted({low, high}):
            out_x.append(xs[i])
            out_y.append(ys[i])
    return out_x, out_y


def heatmap(family: Family, *, flags: dict[str, list[tuple[int, int | None, str]]] | None = None,
            switches: Sequence[Switch] = (), title: str = "") -> str:
    """Rows of ``family`` over its steps; raised flags drawn as bars across the cells they cover."""
    grid = np.array([family.values[row] for row in family.rows], dtype=float)
    valid = grid[np.isfinite(grid)]
    log_scale = valid.size > 0 and float(valid.min()) > 0 and float(valid.max()) / float(valid.min()) > 20
    norm: Normalize = LogNorm(float(valid.min()), float(valid.max())) if log_scale else Normalize()
    edges = _edges(family.steps)
    with _style(grid=False):
        height = min(9.0, 1.6 + 0.18 * len(family.rows))
        fig = Figure(figsize=(8.0, height))
        ax = fig.add_subplot()
        image = ax.pcolormesh(edges, np.arange(len(family.rows) + 1) - 0.5, np.ma.masked_invalid(grid), norm=norm,
                              cmap="viridis", rasterized=True)
        ax.set_ylim(len(family.rows) - 0.5, -0.5)
        fig.colorbar(image, ax=ax, fraction=0.04, pad=0.01, label="log scale" if log_scale else None)
        shown = range(0, len(family.rows), max(1, math.ceil(len(family.rows) / _MAX_ROW_LABELS)))
        ax.set_yticks(list(shown), [family.rows[i] for i in shown], fontsize=7)
        legend: dict[str, str] = {}
        for y, row in enumerate(family.rows):
            for start, end, state in (flags or {}).get(row, []):
                colour = legend.setdefault(state, _FLAG_COLOURS[len(legend) % len(_FLAG_COLOURS)])
                ax.plot([start, end if end is not None else edges[-1]], [y, y], color=colour, linewidth=3,
                        solid_capstyle="butt", label=state)
        if legend:
            handles, labels = ax.get_legend_handles_labels()
            unique = dict(zip(labels, handles, strict=True))
            ax.legend(unique.values(), [f"flag: {k}" for k in unique], fontsize=7, loc="upper right", frameon=True)
        _mark_switches(ax, switches, labels=False)
        ax.set_title(title or family.name, loc="left", fontweight="bold")
        ax.set_xlabel("step")
        fig.tight_layout()
        return _svg(fig)


@contextlib.contextmanager
def _style(*, grid: bool = True) -> Iterator[None]:
    with mpl.rc_context({"svg.fonttype": "none", "font.size": 9, "axes.grid": grid, "grid.alpha": 0.3,
                         "axes.spines.top": False, "axes.spines.right": False}):
        yield


def _edges(steps: Sequence[int]) -> list[float]:
    """Cell borders halfway between logged steps, so irregular logging (step 1, then every 10) stays in place."""
    if len(steps) == 1:
        return [steps[0] - 0.5, steps[0] + 0.5]
    middles = [(a + b) / 2 for a, b in zip(steps, steps[1:], strict=False)]
    return [steps[0] - (middles[0] - steps[0]), *middles, steps[-1] + (steps[-1] - middles[-1])]


def _wide_positive(lines: Sequence[Line]) -> bool:
    """Worth a log axis: all positive and spanning more than a factor of ten."""
    values = [y for line in lines for y in line.ys if math.isfinite(y)]
    return bool(values) and min(values) > 0 and max(values) / min(values) > 10


def _mark_switches(ax: Axes, switches: Sequence[Switch], *, labels: bool = True) -> None:
    for switch in switches:
        ax.axvline(switch.step, color="#555555", linestyle=":", linewidth=1.0)
        if labels:
            ax.annotate(f"{switch.name} {'on' if switch.on else 'off'}", xy=(switch.step, 1.0),
                        xycoords=("data", "axes fraction"), xytext=(2, -2), textcoords="offset points",
                        ha="left", va="top", fontsize=7, color="#333333", rotation=90)


def _svg(fig: Figure) -> str:
    buffer = io.StringIO()
    FigureCanvasSVG(fig).print_svg(buffer)
    text = _METADATA.sub("", _PROLOGUE.sub("", buffer.getvalue(), count=1), count=1)
    return text.strip()
