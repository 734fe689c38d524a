"""Curriculum schedules: plugins switched on at an epoch, parameters annealed by epoch or step.

Every value is a pure function of the trainer's position (step, and the epoch derived from it),
so a resumed run sees exactly the values an uninterrupted one would, with no schedule state to
save beyond the step. Plugins read values here; they never re-implement timing.

Profile form::

    schedules:
      enable_moe_at_epoch: 2            # switch "moe" is off in epoch 1, on from epoch 2
      moe_capacity: {start: 1.5, end: 1.1, by: epoch, mode: linear}
      align_weight: {start: 0.0, end: 0.3, by: step, mode: cosine, warmup: 100}
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from apt import config as cfg
from apt.config import option, require
from apt.errors import ConfigError

_SWITCH = re.compile(r"^enable_([a-z][a-z0-9_]*)_at_epoch$")


@dataclass(frozen=True)
class Anneal:
    start: float = option(doc="value before and at the beginning of the anneal")
    end: float = option(doc="value at the end of the anneal and after")
    by: Literal["epoch", "step"] = option("epoch", doc="unit the anneal advances in")
    mode: Literal["linear", "cosine", "exp"] = option("linear", doc="interpolation shape")
    warmup: int = option(0, ge=0, doc="units held at `start` before annealing begins")
    span: int | None = option(None, gt=0, doc="units the anneal takes after warmup (default: to the end of training)")

    def __post_init__(self) -> None:
        if self.mode == "exp":
            require(self.start * self.end > 0, "end", "mode exp needs start and end non-zero and of the same sign")

    def at(self, position: int, total: int) -> float:
        """Value at ``position`` units from the beginning (0-based) of ``total`` units."""
        span = self.span if self.span is not None else max(1, total - 1 - self.warmup)
        t = min(1.0, max(0.0, (position - self.warmup) / span))
        if self.mode == "linear":
            return self.start + (self.end - self.start) * t
        if self.mode == "cosine":
            return self.end + (self.start - self.end) * 0.5 * (1.0 + math.cos(math.pi * t))
        return self.start * (self.end / self.start) ** t


class Schedule:
    """Schedule values at the trainer's current position.

    ``steps_per_epoch`` maps steps to 1-based epochs; positions are 0-based completed steps.
    """

    def __init__(self, spec: Mapping[str, Any] | None, total_steps: int, steps_per_epoch: int) -> None:
        self.total_steps = total_steps
        self.steps_per_epoch = max(1, steps_per_epoch)
        self.total_epochs = max(1, math.ceil(total_steps / self.steps_per_epoch))
        self.switches: dict[str, int] = {}
        self.params: dict[str, Anneal] = {}
        for key, value in (spec or {}).items():
            path = f"schedules.{key}"
            match = _SWITCH.match(key)
            if match:
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise ConfigError(path, f"expected an epoch number >= 1, got {value!r}")
                self.switches[match.group(1)] = value
            elif isinstance(value, Mapping):
                self.params[key] = cfg.build(Anneal, value, path)
            else:
                raise ConfigError(path, "expected enable_<plugin>_at_epoch: N or "
                                            "{start, end, by, mode, warmup}")
        self.step = 0

    @property
    def epoch(self) -> int:
        """1-based epoch the next step belongs to."""
        return min(self.step // self.steps_per_epoch, self.total_epochs - 1) + 1

    def epoch_of(self, step: int) -> int:
        """1-based epoch of the 1-based step ``step``."""
        return min((step - 1) // self.steps_per_epoch, self.total_epochs - 1) + 1

    def enabled(self, switch: str, epoch: int | None = None) -> bool:
        """Whether switch ``switch`` is on; a switch that no schedule names is always on."""
        return (epoch or self.epoch) >= self.switches.get(switch, 1)

    def value(self, name: str, default: float | None = None) -> float | None:
        """Scheduled value of ``name`` now, or ``default`` if the profile does not schedule it."""
        anneal = self.params.get(name)
        if anneal is None:
            return default
        if anneal.by == "epoch":
            return anneal.at(self.epoch - 1, self.total_epochs)
        return anneal.at(self.step, self.total_steps)

    def snapshot(self) -> dict[str, Any]:
        """Every switch and value now: for epoch banners and metrics."""
        out: dict[str, Any] = {f"enabled.{s}": self.enabled(s) for s in sorted(self.switches)}
        out.update({name: self.value(name) for name in sorted(self.params)})
        return out
