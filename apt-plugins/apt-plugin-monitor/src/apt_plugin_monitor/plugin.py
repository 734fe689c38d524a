"""The gradient monitor as an APT hook-only plugin (entry point ``apt.plugins: monitor``).

Importing this module does not import torch: APT loads every installed plugin's entry point
when a run starts, and a disabled monitor must cost nothing. The tensor work lives in
:mod:`apt_plugin_monitor.stats`, imported on the first hook.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from apt import hookimpl, option, require

if TYPE_CHECKING:
    from apt import Batch, ErrorStore, TrainerView
    from apt_plugin_monitor.stats import Finding, LayerIndex, Measured


@dataclass(frozen=True)
class MonitorConfig:
    log_every: int = option(10, ge=1, doc="optimizer steps between per-layer measurements")
    vanish_below: float = option(1e-7, ge=0, doc="a layer whose gradient L2 norm is below this is vanishing")
    explode_above: float = option(10.0, gt=0, doc="a layer whose gradient L2 norm is above this is exploding "
                                                    "(10x the default train.grad_clip)")
    vanish_ratio: float = option(1e-2, ge=0, lt=1,
                                 doc="also vanishing below this share of the layer's running average")
    explode_ratio: float = option(10.0, gt=1, doc="also exploding above this multiple of the layer's running average")
    average_decay: float = option(0.9, ge=0, lt=1, doc="running average per log step: decay * avg + (1 - decay) * norm")
    warmup: int = option(3, ge=0, doc="log steps before the relative thresholds apply")
    histograms: bool = option(True, doc="TensorBoard histograms of per-layer gradient norms (logging.tensorboard)")
    localize: bool = option(True, doc="check every step's gradients for NaN/Inf and name the module that made the first")

    def __post_init__(self) -> None:
        require(self.vanish_below < self.explode_above, "vanish_below",
                f"must be below explode_above ({self.explode_above:g}), got {self.vanish_below:g}")


class GradientMonitor:
    """Per-layer gradient health, measured where it means something: after AMP unscaling and
    before clipping (``apt_after_backward``), on log steps only, so the step between them pays
    one cheap finiteness check."""

    Config = MonitorConfig
    #: Installed is not enough: a run turns it on with ``plugins.monitor.enabled: true``.
    default_enabled = False

    def __init__(self, config: MonitorConfig) -> None:
        self.config = config
        self._index: LayerIndex | None = None
        self._batch: Batch | None = None
        self._measured: Measured | None = None
        self._finding: tuple[int, Finding] | None = None
        self._in_nonfinite_streak = False
        self._average: dict[str, float] = {}
        self._log_steps = 0
        self._flags: dict[str, str] = {}
        self._store: ErrorStore | None = None
        self._tb: Any = None

    @hookimpl
    def apt_train_start(self, trainer: TrainerView) -> None:
        if self.config.histograms and trainer.profile.logging.tensorboard and trainer.rank == 0:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(trainer.run_dir / "tb"), filename_suffix=".monitor",
                                     purge_step=trainer.step or None)

    @hookimpl
    def apt_step_start(self, batch: Batch) -> None:
        self._batch = batch

    @hookimpl
    def apt_after_backward(self, trainer: TrainerView, step: int) -> None:
        from apt_plugin_monitor import stats

        if self._index is None:
            self._index = stats.LayerIndex(trainer.model)
        if self.config.localize:
            if stats.grads_finite(self._index):
                self._in_nonfinite_streak = False
            elif not self._in_nonfinite_streak:
                self._in_nonfinite_streak = True
                self._localise(trainer, step)
        if step % self.config.log_every == 0 and trainer.rank == 0:  # gradients are already averaged across ranks
            self._measured = stats.measure(self._index)

    @hookimpl
    def apt_step_end(self, trainer: TrainerView, step: int, metrics: dict[str, Any]) -> None:
        if self._finding is not None and self._finding[0] == step:
            metrics["monitor/nonfinite"] = self._finding[1].describe()
        if self._measured is None or self._index is None:
            return
        from apt_plugin_monitor import stats

        measured, self._measured = self._measured, None
        grad, weight, update = stats.finish(self._index, measured)
        keys = self._index.keys
        for name, values in (("grad", grad), ("weight", weight), ("update_ratio", update)):
            metrics.update({f"monitor/{name}/{key}": value for key, value in zip(keys, values, strict=True)})
        layer_grads = dict(zip(keys[: len(self._index.layers)], grad, strict=False))
        self._update_flags(trainer, step, layer_grads)
        metrics["monitor/flags"] = dict(self._flags)
        for flag in ("vanishing", "exploding"):
            metrics[f"monitor/{flag}"] = sum(1 for f in self._flags.values() if f == flag)
        if self._tb is not None:
            finite = [g for g in layer_grads.values() if math.isfinite(g)]
            if finite:
                stats.histogram(self._tb, "monitor/grad_norm_per_layer", finite, step)
                self._tb.flush()

    @hookimpl
    def apt_train_end(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    @hookimpl
    def apt_state_dict(self) -> dict[str, Any]:
        return {"average": dict(self._average), "log_steps": self._log_steps, "flags": dict(self._flags)}

    @hookimpl
    def apt_load_state_dict(self, state: dict[str, Any]) -> None:
        self._average = {str(k): float(v) for k, v in state.get("average", {}).items()}
        self._log_steps = int(state.get("log_steps", 0))
        self._flags = {str(k): str(v) for k, v in state.get("flags", {}).items()}

    def _localise(self, trainer: TrainerView, step: int) -> None:
        from apt_plugin_monitor import stats

        assert self._index is not None
        finding = stats.locate(self._index, self._batch, trainer.profile.train.precision, trainer.device)
        self._finding = (step, finding)
        text = f"monitor: first non-finite value at step {step}: {finding.describe()}"
        trainer.say(text)
        self._record(trainer, "nonfinite_origin", text, step,
                     {"module": finding.module, "kind": finding.kind, "module_type": finding.module_type})

    def _update_flags(self, trainer: TrainerView, step: int, norms: dict[str, float]) -> None:
        """Flag each layer against absolute limits, and against its own running average once that
        has ``warmup`` log steps of history; say and store only the changes."""
        c = self.config
        self._log_steps += 1
        relative = self._log_steps > c.warmup
        for layer, norm in norms.items():
            if not math.isfinite(norm):
                continue
            average = self._average.get(layer)
            flag = ""
            if norm < c.vanish_below or (relative and average is not None and norm < c.vanish_ratio * average):
                flag = "vanishing"
            elif norm > c.explode_above or (relative and average is not None and norm > c.explode_ratio * average):
                flag = "exploding"
            if not flag:  # a spike kept out of the average cannot hide the next one, nor flag the return to normal
                self._average[layer] = norm if average is None else c.average_decay * average + (1 - c.average_decay) * norm
            was = self._flags.get(layer, "")
            if flag == was:
                continue
            if flag:
                self._flags[layer] = flag
                avg = f", running average {average:.3g}" if average is not None else ""
                text = f"monitor: step {step}: {layer} gradient {flag} (norm {norm:.3g}{avg})"
                trainer.say(text)
                self._record(trainer, f"grad_{flag}", text, step, {"layer": layer, "norm": norm, "average": average})
            else:
                del self._flags[layer]
                trainer.say(f"monitor: step {step}: {layer} gradient no longer {was} (norm {norm:.3g})")

    def _record(self, trainer: TrainerView, kind: str, message: str, step: int, context: dict[str, Any]) -> None:
        if trainer.rank != 0:
            return
        try:
            if self._store is None:
                from apt import ErrorStore

                self._store = ErrorStore()
            self._store.record(kind, message, context=context, plugin="monitor", run_id=trainer.run_id, step=step)
        except Exception as err:  # a full disk must not cost the run its monitor
            print(f"apt-plugin-monitor: warning: could not record in the error store: {err}", file=sys.stderr)
