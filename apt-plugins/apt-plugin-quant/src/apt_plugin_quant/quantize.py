"""The model rewrites behind ``quant.int8_dynamic`` and ``quant.bf16``.

``int8_dynamic`` replaces every ``nn.Linear`` by torch's dynamically quantised Linear (int8
weights, activations quantised on the fly per call). First, every module that defines an
*inference form* is swapped for it (:func:`inference_forms`): ``module.inference_form()`` returns
an equivalent eval-mode module (same forward, same outputs within float tolerance) whose large
weights sit in plain ``nn.Linear`` layers called as layers; Tri-Vein attention folds its veins into
its projections this way. The swap depends only on the model's structure, so a saved quantised
state dict loads into ``int8_dynamic(freshly built model)``. A model whose weights still do not
all live in layers it can replace is refused rather than left mostly fp32: two checks find them,

* a floating parameter of two or more dimensions held directly by a module that is not an
  ``nn.Linear``, ``nn.Embedding`` or norm layer (raw expert or projection matrices);
* an ``nn.Linear`` whose weight is read outside its own ``forward`` during a one-token-batch
  dry run (a parent that does ``F.linear(x, self.router.weight)``); once quantised, such a
  layer has no ``weight`` tensor left to read.

Both providers return a new model and leave the one passed in unchanged.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeGuard, cast

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from apt import AptError, HasInferenceForm, QuantProvider

if TYPE_CHECKING:
    from apt import LanguageModel

#: Layers that consume their own weights in their own forward and stay as they are.
_KEPT = (nn.Embedding, nn.EmbeddingBag, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, nn.LocalResponseNorm,
         nn.modules.batchnorm._NormBase)

#: torch's own noise around eager-mode quantisation, silenced only inside these calls.
_NOISE = (
    (DeprecationWarning, r"torch\.ao\.quantization is deprecated"),
    (UserWarning, r"torch\.quantize_per_tensor, torch\.quantize_per_channel"),
    (UserWarning, r"TypedStorage is deprecated"),
)


@contextmanager
def quiet() -> Iterator[None]:
    """Silence the deprecation chatter of ``torch.ao.quantization`` (and nothing else)."""
    with warnings.catch_warnings():
        for category, message in _NOISE:
            warnings.filterwarnings("ignore", message=message, category=category)
        yield


def int8_dynamic(model: LanguageModel, *, per_channel: bool = True, head: bool = True) -> LanguageModel:
    """A copy of ``model`` (in inference form) with every ``nn.Linear`` dynamically quantised to int8 (CPU only)."""
    original, model = model, cast("LanguageModel", inference_forms(model))
    problems = unsupported_layers(model)
    if problems:
        more = f" (and {len(problems) - 1} more like it)" if len(problems) > 1 else ""
        raise AptError(f"quant.int8_dynamic only quantises nn.Linear layers and cannot reach {problems[0]}{more}; "
                       f"use --method bf16 instead")
    media = model.media_parts()
    linears = [name for name, m in model.named_modules()
               if type(m) is nn.Linear and (head or name != "lm_head") and not _within(name, media)]
    if not linears:
        raise AptError(f"quant.int8_dynamic found no nn.Linear layer in {type(model).__name__} to quantise; "
                       f"use --method bf16 instead")
    was_training = original.training
    model.eval()
    with quiet():
        from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic

        qconfig = per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig
        quantized = quantize_dynamic(model, {name: qconfig for name in linears}, dtype=torch.qint8,
                                     inplace=model is not original)  # a copy already: quantise it in place
    original.train(was_training)
    left = [name for name, m in quantized.named_modules()
            if type(m) is nn.Linear and (head or name != "lm_head") and not _within(name, media)]
    if left:
        raise AptError(f"quant.int8_dynamic left {left[0]} in fp32; use --method bf16 instead")
    result = cast("LanguageModel", quantized.eval())
    _smoke(result)
    return result


def inference_forms(model: nn.Module) -> nn.Module:
    """``model`` with every module that has ``inference_form()`` replaced by its result.

    Returns ``model`` itself when no module has one, else a copy (the model passed in is left as it
    was). Modules are visited in ``named_modules`` order and a replaced module's children are not
    visited, so the same architecture always gives the same structure.
    """
    if _has_form(model):
        return model.inference_form()
    targets: list[str] = []
    for name, module in model.named_modules():
        if name and _has_form(module) and not any(name.startswith(f"{t}.") for t in targets):
            targets.append(name)
    if not targets:
        return model
    model = copy.deepcopy(model)
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        module = parent.get_submodule(child)
        if _has_form(module):
            setattr(parent, child, module.inference_form())
    return model


def _within(name: str, parts: tuple[str, ...]) -> bool:
    """Whether module ``name`` is one of ``parts`` or inside one (the media encoders and fusion stay fp32)."""
    return any(name == part or name.startswith(f"{part}.") for part in parts)


def _has_form(module: nn.Module) -> TypeGuard[HasInferenceForm]:
    """Looked up on the class, so a submodule or buffer that happens to be called ``inference_form`` is no form."""
    return isinstance(module, HasInferenceForm)


def bf16(model: LanguageModel) -> LanguageModel:
    """A copy of ``model`` with every floating parameter and buffer in bfloat16."""
    return copy.deepcopy(model).to(torch.bfloat16).eval()


def unsupported_layers(model: LanguageModel) -> list[str]:
    """Weights int8_dynamic cannot reach, as ``path (Type): why`` descriptions, static ones first."""
    problems = []
    media = model.media_parts()
    for name, module in model.named_modules():
        if type(module) is nn.Linear or isinstance(module, _KEPT) or _within(name, media):
            continue
        for pname, p in module.named_parameters(recurse=False):
            if p.is_floating_point() and p.dim() >= 2:
                shape = "x".join(map(str, p.shape))
                problems.append(f"{name or 'the model'} ({type(module).__name__}), which holds its {shape} weight "
                                f"{pname!r} outside nn.Linear")
    return problems + weights_read_outside(model)


def weights_read_outside(model: LanguageModel) -> list[str]:
    """Linear layers whose weight or bias is read outside their own forward in a dry run."""
    owners: dict[int, set[int]] = {}
    for module in model.modules():
        if type(module) is nn.Linear or isinstance(module, _KEPT):
            for p in module.parameters(recurse=False):
                owners.setdefault(id(p), set()).add(id(module))
    watched: dict[int, tuple[str, set[int]]] = {}
    for name, module in model.named_modules():
        if type(module) is nn.Linear:
            for p in module.parameters(recurse=False):
                watched[id(p)] = (name, owners[id(p)])
    probe = _ReadProbe(watched)
    hooks = []
    for module in model.modules():
        if type(module) is nn.Linear or isinstance(module, _KEPT):
            hooks.append(module.register_forward_pre_hook(probe.enter))
            hooks.append(module.register_forward_hook(probe.leave))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), probe:
            model(_probe_input(model))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return [f"{name} (Linear), whose weight its parent reads directly instead of calling the layer"
            for name in probe.found]


class _ReadProbe(TorchFunctionMode):
    """Records watched parameters passed to a torch function while none of their owners runs."""

    def __init__(self, watched: dict[int, tuple[str, set[int]]]) -> None:
        super().__init__()
        self.watched = watched
        self.active: list[int] = []
        self.found: dict[str, None] = {}

    def enter(self, module: nn.Module, args: Any) -> None:
        self.active.append(id(module))

    def leave(self, module: nn.Module, args: Any, output: Any) -> None:
        self.active.pop()

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if getattr(func, "__name__", "") == "__get__":  # .shape, .dtype, .device: metadata, not the weight
            return func(*args, **kwargs)
        for leaf in _tensors((args, kwargs)):
            hit = self.watched.get(id(leaf))
            if hit is not None and not hit[1].intersection(self.active):
                self.found.setdefault(hit[0])
        return func(*args, **kwargs)


def _tensors(obj: Any) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _tensors(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from _tensors(item)


def _probe_input(model: LanguageModel) -> torch.Tensor:
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    return torch.zeros(1, min(4, model.dims.block_size), dtype=torch.long, device=device)


def _smoke(model: LanguageModel) -> None:
    """Run the quantised model once, so a model it broke fails here with a clear line, not later."""
    try:
        with torch.no_grad(), quiet():
            model(_probe_input(model))
    except Exception as err:  # any failure of a rewritten model means: this method does not fit it
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise AptError(f"quant.int8_dynamic produced a model that does not run ({type(err).__name__}: {first}); "
                       f"use --method bf16 instead") from None


def self_test(provider: QuantProvider) -> str:
    """Quantise a tiny language model and check its logits stay close to the float ones."""
    from apt.testing import tiny_model

    model = tiny_model()
    x = torch.randint(0, model.dims.vocab_size, (4, model.dims.block_size), generator=torch.Generator().manual_seed(0))
    quantized = provider.apply(model)
    with torch.no_grad(), quiet():
        ref, out = model(x).logits, quantized(x).logits
    error = (out.float() - ref).abs().max().item() / ref.abs().max().item()
    if error > 0.05:
        raise AssertionError(f"{provider.name}: relative error {error:.3g} on a tiny model exceeds 0.05")
    return f"{provider.name}: tiny model within {error:.2%} of fp32"
