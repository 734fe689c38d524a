"""``apt export``: safetensors, torch.export (.pt2) and ONNX, each verified before it is kept.

The artefact is written beside ``--out`` under a temporary name, reloaded the way a user outside
APT would (``safetensors.torch.load_model`` into a freshly built model, ``torch.export.load(...)
.module()``, ``onnxruntime.InferenceSession``), and its logits are compared with the PyTorch
model's on shapes other than the one traced (another batch size, the full block and a single
token). Only a file that matches is renamed to ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from apt import AptError, CheckpointError, LanguageModel, Loaded, RunError, fsync_dir, load_model, rebuild
from apt import __version__ as apt_version

SAFETENSORS_FORMAT = "apt-safetensors"
SUFFIX = {"safetensors": "safetensors", "torch-export": "pt2", "onnx": "onnx"}
VERIFIED_BY = {"safetensors": "safetensors.torch.load_model into a freshly built model",
               "torch-export": "torch.export.load(...).module()",
               "onnx": "onnxruntime.InferenceSession"}


class LogitsOnly(nn.Module):
    """The model with a forward that returns only the logits (B, T, vocab) of token ids (B, T)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.model(idx).logits


def run_export(args: argparse.Namespace) -> int:
    loaded = load_model(args.checkpoint)
    _check_exportable(loaded, args.format)
    model = loaded.model.eval()
    block = model.dims.block_size
    traced = (2, max(1, min(8, block // 2)))
    checks = [(3, block), (1, 1)]
    out: Path = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}.{SUFFIX[args.format]}")
    try:
        with torch.no_grad():
            if args.format == "safetensors":
                save_safetensors(loaded, tmp)
                reloaded = _safetensors_runner(tmp)
            elif args.format == "torch-export":
                export_pt2(model, tmp, _tokens(model, *traced))
                reloaded = _pt2_runner(tmp)
            else:
                export_onnx(model, tmp, _tokens(model, *traced))
                reloaded = _onnx_runner(tmp)
            diff, scale = 0.0, 1.0
            for shape in checks:
                x = _tokens(model, *shape, seed=len(shape) + shape[1])
                ref = model(x).logits.float()
                diff = max(diff, (reloaded(x).float() - ref).abs().max().item())
                scale = max(scale, ref.abs().max().item())
        tolerance = args.tolerance * scale
        shapes = " and ".join(f"batch {b} x {t} token{'s' if t > 1 else ''}" for b, t in checks)
        if not diff <= tolerance:
            raise RunError(f"the {args.format} export of {loaded.path} does not reproduce the model: max abs logit "
                           f"diff {diff:.3g} > tolerance {tolerance:.3g} on {shapes}; {out} was not written")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # safetensors writes 0600; give the file the usual permissions
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(out.parent)
    print(f"exported {loaded.path} -> {out} ({args.format}, {out.stat().st_size:,} bytes)")
    traced_note = "" if args.format == "safetensors" else f"; traced on batch {traced[0]} x {traced[1]} tokens"
    print(f"verified: reloaded with {VERIFIED_BY[args.format]}, max abs logit diff {diff:.2e} vs PyTorch on "
          f"{shapes} (tolerance {tolerance:.1e}{traced_note})")
    return 0


def _check_exportable(loaded: Loaded, fmt: str) -> None:
    quant = loaded.state.get("quant")
    if not quant:
        return
    method = quant.get("method")
    source = loaded.state.get("source", "its float checkpoint")
    if fmt == "safetensors" and method == "bf16":
        return
    if fmt == "safetensors":
        raise AptError(f"{loaded.path} is quantised with quant.{method}, whose packed weights safetensors cannot "
                       f"hold: export the float checkpoint ({source}), or quantise with --method bf16")
    raise AptError(f"--format {fmt} exports float models only and {loaded.path} is quantised with quant.{method}: "
                   f"export the float checkpoint it came from ({source})")


# -- safetensors -------------------------------------------------------------------------------

def save_safetensors(loaded: Loaded, path: Path) -> None:
    """Weights (the tied head stored once) plus what rebuilds the model, as string metadata."""
    from safetensors.torch import save_model

    state = loaded.state
    metadata = {"format": SAFETENSORS_FORMAT, "format_version": "1", "apt_version": apt_version,
                "profile": json.dumps(state["profile"]), "tokenizer": json.dumps(state["tokenizer"]),
                "providers": json.dumps(state.get("providers", {})), "step": str(state.get("step", 0)),
                "source": str(loaded.path)}
    if state.get("quant"):
        metadata["quant"] = json.dumps(state["quant"])
    save_model(loaded.model, str(path), metadata=metadata)


def load_safetensors(path: str | Path, *, device: str = "cpu") -> tuple[nn.Module, Any]:
    """Rebuild a model exported with ``apt export --format safetensors``: (model, tokenizer).

    The file's metadata names the profile, tokenizer and providers; the installed providers build
    a fresh model and ``safetensors.torch.load_model`` fills in its weights.
    """
    from safetensors import safe_open
    from safetensors.torch import load_model

    path = Path(path)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != SAFETENSORS_FORMAT:
        raise CheckpointError(f"{path} is not an apt safetensors export (no '{SAFETENSORS_FORMAT}' metadata)")
    state = {"profile": json.loads(meta["profile"]), "tokenizer": json.loads(meta["tokenizer"]),
             "providers": json.loads(meta.get("providers", "{}")),
             "quant": json.loads(meta["quant"]) if "quant" in meta else None}
    model, tokenizer, _ = rebuild(state, path, device=device)
    load_model(model, str(path), strict=True, device=device)
    return model.to(device).eval(), tokenizer


def _safetensors_runner(path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    model, _ = load_safetensors(path)
    return lambda x: model(x).logits


# -- torch.export ------------------------------------------------------------------------------

def _dynamic_shapes(model: LanguageModel) -> dict[str, Any]:
    from torch.export import Dim

    return {"idx": {0: Dim("batch", min=1), 1: Dim("seq", min=1, max=model.dims.block_size)}}


def export_pt2(model: LanguageModel, path: Path, example: torch.Tensor) -> None:
    with _exporting("torch-export"):
        program = torch.export.export(LogitsOnly(model).eval(), (example,), dynamic_shapes=_dynamic_shapes(model))
        torch.export.save(program, str(path))


def _pt2_runner(path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    with _exporting("torch-export"):
        module = torch.export.load(str(path)).module()
    return lambda x: module(x)


# -- ONNX --------------------------------------------------------------------------------------

def export_onnx(model: LanguageModel, path: Path, example: torch.Tensor) -> None:
    with _exporting("onnx"):
        torch.onnx.export(LogitsOnly(model).eval(), (example,), str(path), dynamo=True,
                          dynamic_shapes=_dynamic_shapes(model), input_names=["idx"], output_names=["logits"],
                          external_data=False, verbose=False)


def _onnx_runner(path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: torch.from_numpy(session.run(None, {name: x.numpy()})[0])


# -- helpers -----------------------------------------------------------------------------------

@contextlib.contextmanager
def _exporting(fmt: str) -> Iterator[None]:
    """Keep the exporters' progress chatter off the terminal; turn their failures into one line."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._export", "onnxscript")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    except AptError:
        raise
    except Exception as err:  # exporters fail in many ways; the user needs the first line, not a trace
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise RunError(f"--format {fmt} failed ({type(err).__name__}: {first[:300]})") from None
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _tokens(model: LanguageModel, batch: int, length: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.dims.vocab_size, (batch, length), generator=gen)

