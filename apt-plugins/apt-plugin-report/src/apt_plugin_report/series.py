"""Turn metrics records into what gets drawn: curves, per-layer grids, flag changes, curriculum switches.

Plugins log whatever keys they like, so nothing here knows a plugin. A per-layer metric is any
step key of three or more parts: with slashes, the family is all but the last part
(``monitor/grad/blocks.0.attn`` is row ``blocks.0.attn`` of ``monitor/grad``); with dots only,
the family is the first two parts (``monitor.grad_norm.blocks.0.attn``), since layer names have
dots of their own. A key whose value is a list of numbers (``moe.expert_frac``) or a mapping
(``{"blocks.3": 0.1}``) is a family by itself, one row per index or entry. Families whose name
mentions ``flag``, or whose values are not numbers, are read as flags; a mapping of flags names
every raised one each time it is logged, so a row missing from it has been cleared.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

#: Step keys the core writes; the rest are plugin metrics.
CORE_STEP_KEYS = frozenset({"event", "step", "epoch", "loss", "lr", "grad_norm", "tokens_per_s"})
_OFF_VALUES = frozenset({"", "ok", "none", "off", "false", "0"})
_SEPARATOR = re.compile(r"[./]")


@dataclass
class Family:
    """One heatmap's worth of keys: ``rows`` in first-seen order, ``values[row][i]`` at ``steps[i]``."""

    name: str
    steps: list[int] = field(default_factory=list)
    rows: list[str] = field(default_factory=list)
    values: dict[str, list[float]] = field(default_factory=dict)


@dataclass(frozen=True)
class FlagChange:
    step: int
    family: str
    row: str
    before: str
    after: str


@dataclass(frozen=True)
class Switch:
    step: int
    name: str
    on: bool


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def finite(value: Any) -> float:
    """A plottable float: non-numbers and non-finite values become NaN (a gap in the line)."""
    return float(value) if is_number(value) and math.isfinite(value) else math.nan


def curve(records: Iterable[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for record in records:
        if key in record:
            xs.append(int(record["step"]))
            ys.append(finite(record[key]))
    return xs, ys


def split_key(key: str) -> tuple[str, str] | None:
    """``(family, row)`` of a per-layer key, None for a plain scalar such as ``moe.balance_loss``."""
    if key.count("/") >= 2:
        family, _, row = key.rpartition("/")
        return family, row
    parts = key.split(".")
    if "/" in key or len(parts) < 3:
        return None
    return ".".join(parts[:2]), ".".join(parts[2:])


def top(name: str) -> str:
    """The plugin a key or family belongs to: its first part (``monitor`` of ``monitor/grad``)."""
    return _SEPARATOR.split(name, maxsplit=1)[0]


def is_flag_family(name: str) -> bool:
    return "flag" in name.lower()


def _numeric_mapping(value: Any) -> bool:
    return isinstance(value, dict) and bool(value) and all(is_number(v) for v in value.values())


def plugin_scalars(steps: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Numeric plugin keys that are not part of a family, grouped by plugin."""
    groups: dict[str, list[str]] = {}
    for record in steps:
        for key, value in record.items():
            if key in CORE_STEP_KEYS or split_key(key) is not None or not is_number(value):
                continue
            group = groups.setdefault(top(key), [])
            if key not in group:
                group.append(key)
    return groups


def families(steps: list[dict[str, Any]]) -> list[Family]:
    """Numeric per-layer families, list- and mapping-valued keys, in first-seen order; flags are left out."""
    found: dict[str, Family] = {}
    for record in steps:
        step = int(record["step"])
        for key, value in record.items():
            if key in CORE_STEP_KEYS:
                continue
            if isinstance(value, list) and value and all(is_number(v) for v in value):
                family = found.setdefault(key, Family(key))
                for i, v in enumerate(value):
                    _put(family, f"[{i}]", step, finite(v))
                continue
            if _numeric_mapping(value) and not is_flag_family(key):
                family = found.setdefault(key, Family(key))
                for row, v in value.items():
                    _put(family, str(row), step, finite(v))
                continue
            parts = split_key(key)
            if parts is None or is_flag_family(parts[0]) or not is_number(value):
                continue
            _put(found.setdefault(parts[0], Family(parts[0])), parts[1], step, finite(value))
    return [f for f in found.values() if f.rows]


def _put(family: Family, row: str, step: int, value: float) -> None:
    if not family.steps or family.steps[-1] != step:
        family.steps.append(step)
        for column in family.values.values():
            column.append(math.nan)
    if row not in family.values:
        family.rows.append(row)
        family.values[row] = [math.nan] * len(family.steps)
    family.values[row][-1] = value


def flag_state(value: Any) -> str:
    """A flag value in words; ``""`` means not raised."""
    if isinstance(value, bool):
        return "raised" if value else ""
    if is_number(value):
        return "" if value == 0 or not math.isfinite(value) else f"{value:g}"
    text = str(value).strip()
    return "" if text.lower() in _OFF_VALUES else text


def flag_changes(steps: list[dict[str, Any]]) -> list[FlagChange]:
    """Every change of a flag, from its previous value (none before the first record)."""
    state: dict[tuple[str, str], str] = {}
    changes = []

    def note(step: int, family: str, row: str, value: Any) -> None:
        now, before = flag_state(value), state.get((family, row), "")
        if now != before:
            changes.append(FlagChange(step, family, row, before, now))
            state[family, row] = now

    for record in steps:
        step = int(record["step"])
        for key, value in record.items():
            if key in CORE_STEP_KEYS:
                continue
            if isinstance(value, dict) and (is_flag_family(key) or not _numeric_mapping(value)):
                for family, row in [k for k in state if k[0] == key and k[1] not in value]:
                    note(step, family, row, "")
                for row, flag in value.items():
                    note(step, key, str(row), flag)
                continue
            parts = split_key(key)
            if parts is None or (not is_flag_family(parts[0]) and (is_number(value) or isinstance(value, list))):
                continue
            note(step, parts[0], parts[1], value)
    return changes


def raised_flags(changes: list[FlagChange]) -> dict[str, list[tuple[int, int | None, str]]]:
    """Per row: ``(from_step, to_step or None, state)`` intervals during which a flag was raised."""
    spans: dict[str, list[tuple[int, int | None, str]]] = {}
    for change in changes:
        rows = spans.setdefault(change.row, [])
        if rows and rows[-1][1] is None:
            start, _, what = rows[-1]
            rows[-1] = (start, change.step, what)
        if change.after:
            rows.append((change.step, None, change.after))
    return spans


def messages(steps: list[dict[str, Any]]) -> list[tuple[int, str, str]]:
    """Text a plugin put in a step record outside any family (``monitor/nonfinite``): ``(step, key, text)``."""
    return [(int(r["step"]), key, value) for r in steps for key, value in r.items()
            if key not in CORE_STEP_KEYS and isinstance(value, str) and value.strip() and split_key(key) is None]


def switches(epochs: list[dict[str, Any]]) -> list[Switch]:
    """Curriculum switches turning on or off, from the ``enabled.*`` fields of epoch records.

    A switch already on in the first epoch is listed as turning on at its start, so that a run
    that begins with a plugin enabled says so on the time axis too.
    """
    state: dict[str, bool] = {}
    out = []
    for record in epochs:
        for key, value in record.items():
            if not key.startswith("enabled.") or not isinstance(value, bool):
                continue
            name = key.removeprefix("enabled.")
            if state.get(name, False) != value:
                out.append(Switch(int(record["step"]), name, value))
            state[name] = value
    return out


def eval_samples(evals: list[dict[str, Any]]) -> list[tuple[int, str, str]]:
    """Text an eval record carries (generated samples, if a plugin logs any): ``(step, key, text)``."""
    return [(int(r["step"]), key, value) for r in evals for key, value in r.items()
            if key != "event" and isinstance(value, str) and value.strip()]
