"""A profile's ``search:`` section: which profile keys a study varies, over which distributions.

The core validates profiles strictly and knows nothing of ``search:``, so the section is read and
checked here (errors point at its lines), then stripped: every trial trains an ordinary profile.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from apt import AptError, assign, parse_assignments, read_profile

EXAMPLE = "search: {train.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}}"
#: Keys a trial's run directory and identity depend on; apt tune sets them per trial.
MANAGED = ("name", "checkpoint.dir")
KEYS = {"float": {"type", "low", "high", "log", "step"}, "int": {"type", "low", "high", "log", "step"},
        "categorical": {"type", "choices"}}


@dataclass(frozen=True)
class Param:
    """One searched key: ``path`` is the dotted profile key, ``where`` its ``file:line`` in the profile."""

    path: str
    kind: str
    where: str = ""
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: Any) -> Any:
        """The trial's value (Optuna's suggest_* by kind, so samplers see the true distribution)."""
        if self.kind == "categorical":
            return trial.suggest_categorical(self.path, list(self.choices))
        if self.kind == "int":
            step = 1 if self.step is None else int(self.step)
            return trial.suggest_int(self.path, int(self.low), int(self.high), step=step, log=self.log)
        return trial.suggest_float(self.path, self.low, self.high, step=self.step, log=self.log)


@dataclass(frozen=True)
class TuningProfile:
    """A profile split into what every trial shares (``base``) and what the study varies (``space``)."""

    path: Path
    name: str
    base: dict[str, Any]
    space: tuple[Param, ...]

    def with_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The trial's profile: ``base`` with each searched key set to its sampled value."""
        data = copy.deepcopy(self.base)
        for key, value in params.items():
            assign(data, key, value, f"search.{key}")
        return data


def find_profile(name_or_path: str) -> Path:
    """A YAML path as given, else a profile shipped with apt (``-p tiny_debug``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    if "/" not in name_or_path and path.suffix in ("", ".yaml", ".yml"):
        shipped = resources.files("apt") / "profiles" / f"{path.stem}.yaml"
        if shipped.is_file():
            return Path(str(shipped))
    raise AptError(f"profile {name_or_path!r} not found: pass a YAML file path or the name of a shipped profile")


def profile_name(path: Path) -> str:
    data, _ = read_profile(path)
    name = data.get("name")
    return name if isinstance(name, str) and name else path.stem


def load(name_or_path: str, overrides: Sequence[str] = (), *, need_search: bool = True) -> TuningProfile:
    """Read a profile, apply ``--set`` overrides and validate its ``search:`` section."""
    path = find_profile(name_or_path)
    data, node = read_profile(path)
    lines = _search_lines(node)
    search = data.pop("search", None)
    name = data.get("name")
    data["name"] = name if isinstance(name, str) and name else path.stem
    for key, value in parse_assignments(overrides, "--set", "train.max_iters=200").items():
        if key.split(".")[0] == "search":
            raise AptError(f"--set {key}=...: the search space comes from the profile; edit its search: section")
        assign(data, key, value, f"--set {key}")
    space = _parse_space(search, path, lines, data) if search is not None else ()
    if need_search and not space:
        raise AptError(f"{path}: has no search: section; add one mapping profile keys to distributions, "
                       f"e.g. {EXAMPLE}")
    return TuningProfile(path, data["name"], data, space)


def _search_lines(node: yaml.Node | None) -> dict[str, int]:
    lines: dict[str, int] = {}
    if not isinstance(node, yaml.MappingNode):
        return lines
    for key_node, value_node in node.value:
        if key_node.value == "search":
            lines[""] = key_node.start_mark.line + 1
            if isinstance(value_node, yaml.MappingNode):
                for k, _ in value_node.value:
                    lines[str(k.value)] = k.start_mark.line + 1
    return lines


def _parse_space(search: Any, path: Path, lines: dict[str, int], base: dict[str, Any]) -> tuple[Param, ...]:
    def fail(key: str, message: str) -> AptError:
        line = lines.get(key, lines.get(""))
        where = f"{path}:{line}" if line else str(path)
        return AptError(f"{where}: search{'.' + key if key else ''}: {message}")

    if not isinstance(search, dict) or not search:
        raise fail("", f"expected a mapping of profile keys to distributions, e.g. {EXAMPLE}")
    params = []
    for key, spec in search.items():
        key = str(key)
        if any(not part for part in key.split(".")):
            raise fail(key, "expected a dotted profile key such as train.lr or providers.attention.tva.r")
        if key in MANAGED or key.startswith("search."):
            raise fail(key, "is set by apt tune for every trial; search training settings instead")
        _check_path(base, key, fail)
        line = lines.get(key)
        params.append(replace(_parse_param(key, spec, fail), where=f"{path}:{line}" if line else str(path)))
    return tuple(params)


def _check_path(base: dict[str, Any], key: str, fail: Any) -> None:
    node: Any = base
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            return
        if not isinstance(node, dict):
            raise fail(key, f"{'.'.join(parts[: i + 1])} is a value in the profile, not a section")


def _parse_param(key: str, spec: Any, fail: Any) -> Param:
    if not isinstance(spec, dict) or spec.get("type") not in KEYS:
        got = spec.get("type") if isinstance(spec, dict) else spec
        raise fail(key, f"expected a distribution {{type: float|int|categorical, ...}}, got {got!r}; "
                        "write nested keys as one dotted key, e.g. train.lr")
    kind = spec["type"]
    unknown = sorted(set(spec) - KEYS[kind])
    if unknown:
        raise fail(key, f"unknown field {unknown[0]!r} for type {kind}; expected {', '.join(sorted(KEYS[kind]))}")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise fail(key, "categorical needs choices: a non-empty list, e.g. choices: [tva, sdpa]")
        bad = [c for c in choices if c is not None and not isinstance(c, (str, int, float, bool))]
        if bad:
            raise fail(key, f"choices must be plain values (numbers, strings, booleans, null), got {bad[0]!r}")
        if len({repr(c) for c in choices}) != len(choices):
            raise fail(key, "choices repeat a value; list each once")
        return Param(key, kind, choices=tuple(choices))
    low, high = (_number(spec, bound, kind, key, fail) for bound in ("low", "high"))
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise fail(key, f"log: expected true or false, got {log!r}")
    if not low < high:
        raise fail(key, f"low must be below high, got low={low:g} high={high:g}")
    if log and low <= 0:
        raise fail(key, f"log: true needs low > 0, got low={low:g}")
    step = None
    if spec.get("step") is not None:
        step = _number(spec, "step", kind, key, fail)
        if step <= 0 or log:
            raise fail(key, "step must be > 0 and cannot be combined with log: true")
    return Param(key, kind, low=low, high=high, log=log, step=step)


def _number(spec: dict[str, Any], field: str, kind: str, key: str, fail: Any) -> float:
    value = spec.get(field)
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise fail(key, f"{field}: expected a number, got {value!r}")
    if kind == "int" and not float(value).is_integer():
        raise fail(key, f"{field}: type int needs a whole number, got {value!r}")
    return float(value)
