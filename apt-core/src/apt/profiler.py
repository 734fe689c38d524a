"""``apt train --profile``: where step time goes, per plugin hook and per provider.

Off by default, and then absent from the step: the trainer holds no profiler, the plugin
host's probe is None and no module hooks exist. When on, every hook implementation is timed
through :attr:`apt.plugins.PluginHost.probe`, each provider's modules get forward hooks (and
gradient hooks on their inputs and outputs, which bracket their backward), and a window of
steps is recorded with ``torch.profiler`` into a Chrome trace that Perfetto opens, with
``record_function`` ranges naming each hook and provider forward.

Times are wall-clock. On CUDA each measured boundary synchronises the device, which slows the
profiled run but charges kernels to the provider or plugin that launched them.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from torch.utils.hooks import RemovableHandle

    from apt.trainer import Trainer

#: Steps the Chrome trace covers unless asked otherwise; the first step (allocations, warm-up) is left out.
TRACE_STEPS = 5


@dataclass
class Cost:
    seconds: float = 0.0
    calls: int = 0
    #: Largest growth of allocated CUDA memory over one call (activations a forward keeps).
    peak_bytes: int = 0


class StepProfiler:
    """Attach to a trainer before :meth:`Trainer.run`; the trainer calls :meth:`step` and :meth:`close`."""

    def __init__(self, trainer: Trainer, *, trace_steps: int = TRACE_STEPS) -> None:
        from apt.trainer import provider_modules

        self.trainer = trainer
        self.cuda = trainer.device.type == "cuda"
        self.costs: dict[tuple[str, str, str], Cost] = {}
        self.step_seconds = 0.0
        self.steps = 0
        self.trace_path = trainer.run_dir / "trace.json"
        self.trace_from = trainer.step + 2
        self.trace_to = self.trace_from + trace_steps - 1
        self.traced: tuple[int, int] | None = None
        self._trace: torch.profiler.profile | None = None
        self._in_step = False
        self._handles: list[RemovableHandle] = []
        for key, module in provider_modules(trainer.built):
            self._watch(key, module)
        trainer.host.probe = self._hook_probe

    def step(self, train_step: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Run one training step, timed, inside the trace window when it falls there."""
        step = self.trainer.step + 1
        if step == self.trace_from and self.trainer.dist.main:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if self.cuda:
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            self._trace = torch.profiler.profile(activities=activities)
            self._trace.start()
        self._sync()
        started = time.perf_counter()
        self._in_step = True
        try:
            return train_step()
        finally:
            self._in_step = False
            self._sync()
            self.step_seconds += time.perf_counter() - started
            self.steps += 1
            if step >= self.trace_to:
                self._write_trace(step)

    def close(self) -> list[str]:
        """Detach everything and return the report: one line per hook and provider pass, costliest first."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.trainer.host.probe = None
        self._write_trace(self.trainer.step)
        return self.table()

    def table(self) -> list[str]:
        per_step = self.step_seconds / max(1, self.steps)
        head = f"profile: {self.steps} steps, {per_step * 1e3:.2f} ms per step ({self.step_seconds:.3f} s in steps)"
        if self.traced is not None:
            head += f"; Chrome trace of steps {self.traced[0]}-{self.traced[1]}: {self.trace_path}"
        lines = [head, f"  {'where':<48} {'calls':>7} {'total ms':>10} {'ms/call':>9} {'% of step time':>15}"
                       + (f" {'MiB kept':>9}" if self.cuda else "")]
        for (kind, who, what), cost in sorted(self.costs.items(), key=lambda item: -item[1].seconds):
            name = f"{kind} {who}.{what}" if kind == "hook" else f"{kind} {who} {what}"
            share = 100.0 * cost.seconds / self.step_seconds if self.step_seconds else 0.0
            line = (f"  {name:<48} {cost.calls:>7} {cost.seconds * 1e3:>10.2f} "
                    f"{cost.seconds * 1e3 / max(1, cost.calls):>9.3f} {share:>14.1f}%")
            if self.cuda:
                line += f" {cost.peak_bytes / 2**20:>9.1f}" if what == "forward" else f" {'':>9}"
            lines.append(line)
        return lines

    # -- internals ---------------------------------------------------------------------------

    def _add(self, key: tuple[str, str, str], seconds: float, grown: int = 0) -> None:
        cost = self.costs.setdefault(key, Cost())
        cost.seconds += seconds
        cost.calls += 1
        cost.peak_bytes = max(cost.peak_bytes, grown)

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.trainer.device)

    def _memory(self) -> int:
        return torch.cuda.memory_allocated(self.trainer.device) if self.cuda else 0

    @contextlib.contextmanager
    def _hook_probe(self, plugin: str, hook: str) -> Iterator[None]:
        with torch.profiler.record_function(f"hook {plugin}.{hook}"):
            self._sync()
            started = time.perf_counter()
            try:
                yield
            finally:
                self._sync()
                self._add(("hook", plugin, hook), time.perf_counter() - started)

    def _watch(self, key: str, module: torch.nn.Module) -> None:
        """Time the module's training forwards, and its backward: from the gradient reaching its
        output to the gradient of its input being complete."""
        open_calls: list[tuple[float, int, Any, list[float]]] = []

        def before(_: torch.nn.Module, args: tuple[Any, ...]) -> None:
            if not self._in_step:
                return
            self._sync()
            scope = torch.profiler.record_function(f"provider {key} forward")
            scope.__enter__()
            backward: list[float] = []
            x = args[0] if args and isinstance(args[0], torch.Tensor) else None
            if x is not None and x.requires_grad and torch.is_grad_enabled():
                x.register_hook(lambda grad: self._backward_done(key, backward))
            open_calls.append((time.perf_counter(), self._memory(), scope, backward))

        def after(_: torch.nn.Module, args: tuple[Any, ...], out: Any) -> None:
            if not self._in_step or not open_calls:
                return
            started, memory, scope, backward = open_calls.pop()
            self._sync()
            self._add(("provider", key, "forward"), time.perf_counter() - started, self._memory() - memory)
            scope.__exit__(None, None, None)
            if isinstance(out, torch.Tensor) and out.requires_grad:
                out.register_hook(lambda grad: self._backward_starts(backward))

        self._handles.append(module.register_forward_pre_hook(before))
        self._handles.append(module.register_forward_hook(after))

    def _backward_starts(self, backward: list[float]) -> None:
        self._sync()
        backward.append(time.perf_counter())

    def _backward_done(self, key: str, backward: list[float]) -> None:
        if backward:
            self._sync()
            self._add(("provider", key, "backward"), time.perf_counter() - backward.pop())

    def _write_trace(self, step: int) -> None:
        if self._trace is None:
            return
        trace, self._trace = self._trace, None
        trace.stop()
        partial = self.trace_path.with_name(f".{self.trace_path.name}.tmp")
        trace.export_chrome_trace(str(partial))
        os.replace(partial, self.trace_path)
        self.traced = (self.trace_from, step)
