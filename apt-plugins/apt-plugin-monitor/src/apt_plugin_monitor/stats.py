"""The tensor side of the monitor: grouping parameters into layers, norms in one pass, and the
replay that names the module where a NaN or Inf first appeared."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


class LayerIndex:
    """Which layer and parameter group each parameter belongs to, fixed for the run.

    A layer is a top-level child of the model, or one entry of a top-level ``ModuleList``,
    ``Sequential`` or ``ModuleDict`` (``blocks.2``, ``extras.moe``); a group is a layer's child
    (``blocks.2.attn``).
    Norms of all of them come from one matrix product over the per-parameter squared norms.
    """

    def __init__(self, model: nn.Module) -> None:
        containers = {name for name, child in model.named_children()
                      if isinstance(child, (nn.ModuleList, nn.ModuleDict, nn.Sequential))}
        self.names: list[str] = []
        self.params: list[nn.Parameter] = []
        self.layers: list[str] = []
        groups: list[str] = []
        owners: list[tuple[str, str | None]] = []
        for name, param in model.named_parameters():
            if not param.requires_grad:
                continue
            parts = name.split(".")
            depth = 2 if parts[0] in containers and len(parts) > 2 else 1
            layer = ".".join(parts[:depth])
            group = ".".join(parts[: depth + 1]) if len(parts) > depth + 1 else None
            if layer not in self.layers:
                self.layers.append(layer)
            if group is not None and group not in groups:
                groups.append(group)
            self.names.append(name)
            self.params.append(param)
            owners.append((layer, group))
        self.model = model
        #: Layers first, then groups: the order of every vector :func:`finish` returns.
        self.keys = self.layers + groups
        position = {key: i for i, key in enumerate(self.keys)}
        device = self.params[0].device if self.params else torch.device("cpu")
        # (K, P): row k sums the squared norms of the parameters in key k
        self.membership = torch.zeros(len(self.keys), len(self.params), device=device)
        for j, (layer, group) in enumerate(owners):
            self.membership[position[layer], j] = 1.0
            if group is not None:
                self.membership[position[group], j] = 1.0


@dataclass
class Measured:
    grad: torch.Tensor  # (K,) gradient norms, before clipping
    weight: torch.Tensor  # (K,) weight norms before the update
    before: list[torch.Tensor]  # the weights before the update, for the update-to-weight ratio


@dataclass(frozen=True)
class Finding:
    module: str | None
    kind: str
    module_type: str = ""

    def describe(self) -> str:
        if self.module is None:
            return f"{self.kind} (not reproduced by replaying the step's first micro-batch)"
        return f"{self.kind} of {self.module} ({self.module_type})"


def _squared_norms(tensors: list[torch.Tensor | None], like: list[nn.Parameter]) -> torch.Tensor:
    # (P,) float32; a parameter without a gradient counts as zero
    return torch.stack([torch.linalg.vector_norm(t.detach(), dtype=torch.float32) ** 2 if t is not None
                        else torch.zeros((), device=p.device) for t, p in zip(tensors, like, strict=True)])


def grads_finite(index: LayerIndex) -> bool:
    """One reduction and one sync per step: a NaN or Inf anywhere makes the sum of sums
    non-finite. A sum that merely overflows is re-checked exactly before anyone is blamed."""
    sums = [p.grad.sum(dtype=torch.float32) for p in index.params if p.grad is not None]
    if not sums:
        return True
    if bool(torch.isfinite(torch.stack(sums).sum())):
        return True
    return all(bool(torch.isfinite(p.grad).all()) for p in index.params if p.grad is not None)


def measure(index: LayerIndex) -> Measured:
    """Gradient and weight norms per key, kept on the device until :func:`finish` (no sync here)."""
    grads = [p.grad for p in index.params]
    weights = [p.detach() for p in index.params]
    grad = (index.membership @ _squared_norms(grads, index.params)).sqrt()
    weight = (index.membership @ _squared_norms(list(weights), index.params)).sqrt()
    return Measured(grad, weight, [w.clone() for w in weights])


def finish(index: LayerIndex, measured: Measured) -> tuple[list[float], list[float], list[float]]:
    """Gradient norm, weight norm and ``||w_after - w_before|| / ||w_before||`` per key, after the
    optimizer step (0 update when the trainer skipped it)."""
    deltas = [p.detach() - b for p, b in zip(index.params, measured.before, strict=True)]
    update = (index.membership @ _squared_norms(list(deltas), index.params)).sqrt()
    ratio = update / measured.weight.clamp_min(torch.finfo(torch.float32).tiny)
    grad, weight, ratio = torch.stack([measured.grad, measured.weight, ratio]).tolist()
    return grad, weight, ratio


def histogram(writer: Any, tag: str, values: list[float], step: int) -> None:
    writer.add_histogram(tag, torch.tensor(values, dtype=torch.float64), step)


def _tensors(obj: Any) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (tuple, list)):
        for item in obj:
            yield from _tensors(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from _tensors(item)


def _nonfinite(obj: Any) -> bool:
    return any(t.is_floating_point() and not bool(torch.isfinite(t).all()) for t in _tensors(obj))


def locate(index: LayerIndex, batch: Any, precision: str, device: torch.device) -> Finding:
    """Name the first module, in execution order, whose input, weight or output is non-finite,
    by replaying the step's first micro-batch under forward hooks (no gradients kept); if the
    forward pass is clean, the parameter nearest the loss with a non-finite gradient.

    Runs only once a non-finite gradient has been seen, so the hooks never touch a healthy step.
    """
    model = index.model
    names = {id(m): name or "model" for name, m in model.named_modules()}
    found: list[Finding] = []

    def before(module: nn.Module, args: Any) -> None:
        if not found and _nonfinite(args):
            found.append(Finding(names[id(module)], "input", type(module).__name__))

    def after(module: nn.Module, args: Any, output: Any) -> None:
        if not found and _nonfinite(output):
            own = any(not bool(torch.isfinite(p).all()) for p in module.parameters(recurse=False))
            found.append(Finding(names[id(module)], "weight" if own else "output", type(module).__name__))

    if batch is not None:
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        autocast = (torch.autocast(device.type, dtype=dtype) if dtype is not None
                    else contextlib.nullcontext())
        handles = []
        for module in model.modules():
            handles.append(module.register_forward_pre_hook(before))
            handles.append(module.register_forward_hook(after))
        try:
            with torch.no_grad(), autocast:
                model(batch[0])
        finally:
            for handle in handles:
                handle.remove()
    if found:
        return found[0]
    modules = dict(model.named_modules())
    for name, param in reversed(list(zip(index.names, index.params, strict=True))):
        if param.grad is not None and not bool(torch.isfinite(param.grad).all()):
            owner = name.rpartition(".")[0]
            return Finding(owner or "model", "gradient", type(modules.get(owner, model)).__name__)
    return Finding(None, "gradient")
