"""``apt quantize`` and ``apt export`` (argument parsing only; torch is imported by the work itself)."""

from __future__ import annotations

import argparse
import functools
import importlib
from collections.abc import Sequence
from pathlib import Path

from apt import AptError, ArgumentParser

FORMATS = ("safetensors", "torch-export", "onnx")
ONNX_MODULES = ("onnx", "onnxscript", "onnxruntime")


def quantize_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="apt quantize",
                description="quantise a trained checkpoint into DIR/model.pt and report size, speed and "
                            "perplexity before and after; apt generate/eval --checkpoint DIR then load it")
    p.add_argument("--checkpoint", required=True, help="run directory or checkpoint file of a float model")
    p.add_argument("--method", required=True, metavar="int8_dynamic|bf16",
                   help="quant provider: int8_dynamic (nn.Linear weights int8, CPU) or bf16 (every weight bfloat16)")
    p.add_argument("--out", required=True, type=Path, help="directory to write model.pt and report.json to")
    p.add_argument("--eval-data", type=Path, help="held-out text or JSONL file: loss and perplexity before/after")
    p.add_argument("--jsonl-field", default="text", help="field holding the text of --eval-data JSONL documents")
    p.add_argument("--device", default="cpu", help="where to measure (int8_dynamic runs on cpu only)")
    p.add_argument("--set", dest="options", action="append", default=[], metavar="OPTION=VALUE",
                   help="provider option, e.g. --set per_channel=false (see: apt plugin info quant int8_dynamic)")
    p.add_argument("--prompt", default="\n", help="fixed prompt of the speed measurement")
    p.add_argument("--speed-tokens", type=int, default=None,
                   help="tokens generated per speed sample (default: twice the block size, 32 to 256)")
    p.add_argument("--speed-rounds", type=int, default=5,
                   help="interleaved before/after rounds of the speed measurement; 0 skips it")
    return p


def export_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="apt export",
                description="export a checkpoint's model (forward returns logits) and verify the file by "
                            "reloading it outside APT and comparing logits")
    p.add_argument("--checkpoint", required=True, help="run directory, checkpoint file or apt quantize directory")
    p.add_argument("--format", required=True, choices=FORMATS,
                   help="safetensors (weights + profile metadata), torch-export (.pt2), onnx (single .onnx file)")
    p.add_argument("--out", required=True, type=Path, help="file to write (e.g. model.safetensors, model.pt2, "
                                                           "model.onnx)")
    p.add_argument("--tolerance", type=float, default=1e-4,
                   help="max abs logit difference allowed, as a fraction of the largest |logit| (taken as >= 1)")
    return p


def quantize(argv: Sequence[str]) -> int:
    args = quantize_parser().parse_args(argv)
    if args.speed_tokens is not None and args.speed_tokens < 1:
        raise AptError("--speed-tokens must be >= 1")
    if args.speed_rounds < 0:
        raise AptError("--speed-rounds must be >= 0 (0 skips the speed measurement)")
    from apt_plugin_quant.commands import run_quantize

    return run_quantize(args)


def export(argv: Sequence[str]) -> int:
    args = export_parser().parse_args(argv)
    if not args.tolerance > 0:
        raise AptError("--tolerance must be > 0")
    if args.out.is_dir():
        suffix = {"safetensors": "safetensors", "torch-export": "pt2", "onnx": "onnx"}[args.format]
        raise AptError(f"--out {args.out} is a directory: name the file to write, e.g. {args.out / f'model.{suffix}'}")
    if args.format == "onnx":
        require_onnx()
    from apt_plugin_quant.export import run_export

    return run_export(args)


@functools.cache
def missing_onnx_module() -> str | None:
    """The first module of the ``onnx`` extra that does not import, or None (imported once, on demand)."""
    for name in ONNX_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            return name
    return None


def require_onnx() -> None:
    missing = missing_onnx_module()
    if missing is not None:
        raise AptError(f"--format onnx needs {', '.join(ONNX_MODULES)} ({missing} is not installed): "
                       f"pip install 'apt-plugin-quant[onnx]'")
