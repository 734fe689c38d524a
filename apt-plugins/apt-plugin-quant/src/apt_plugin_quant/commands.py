"""``apt quantize``: quantise a checkpoint, save it as DIR/model.pt, report what changed."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from apt import (
    MODEL_FILE,
    AptError,
    LanguageModel,
    QuantProvider,
    RunError,
    atomic_write,
    checkpoint_dir,
    default_registry,
    load_model,
    parse_assignments,
    save_file,
)
from apt_plugin_quant import __version__
from apt_plugin_quant.measure import generation_speed, held_out_loss, saved_bytes

#: What a quantised model file keeps of its source checkpoint (not the optimizer, scaler, RNG...).
KEPT_KEYS = ("step", "run_id", "profile", "providers", "tokenizer")


def run_quantize(args: argparse.Namespace) -> int:
    registry = default_registry()
    if registry.info("quant", args.method) is None:
        names = ", ".join(sorted(info.name for info in registry.infos("quant"))) or "none"
        raise AptError(f"unknown --method {args.method!r}: choose one of the installed quant providers ({names})")
    provider = registry.make("quant", args.method, parse_assignments(args.options, "--set", "per_channel=false"))
    assert isinstance(provider, QuantProvider)  # the registry checked the class against its kind
    devices = provider.devices
    if devices and torch.device(args.device).type not in devices:
        raise AptError(f"--method {args.method} runs on {' or '.join(devices)} only: pass --device {devices[0]}")
    if args.out.exists() and not args.out.is_dir():
        raise AptError(f"--out {args.out} is a file: pass a directory to write model.pt and report.json to")
    if checkpoint_dir(args.out).is_dir():
        raise AptError(f"--out {args.out} is a training run directory: write the quantised model beside it, "
                       f"e.g. --out {args.out / args.method}")

    loaded = load_model(args.checkpoint, device=args.device)
    if loaded.state.get("quant"):
        source = loaded.state.get("source", "the float checkpoint")
        raise AptError(f"{loaded.path} is already quantised with quant.{loaded.state['quant'].get('method')}: "
                       f"quantise the checkpoint it came from ({source})")
    loaded.tokenizer.encode(args.prompt)  # fail now, not after quantising, on a prompt outside the vocabulary
    eval_ids = _eval_ids(args, loaded.tokenizer) if args.eval_data else None

    quantized = provider.apply(loaded.model)
    recipe = {"method": provider.name, "options": dataclasses.asdict(provider.config), "plugin_version": __version__}
    kept = {key: loaded.state[key] for key in KEPT_KEYS if key in loaded.state}
    path = save_file(args.out / MODEL_FILE, {**kept, "model": quantized.state_dict(), "quant": recipe,
                                                       "source": str(loaded.path)})
    reloaded = load_model(args.out, device=args.device).model
    reload_diff = _max_logit_diff(quantized, reloaded, args.device)
    if reload_diff > 1e-5:
        raise RunError(f"{path} does not reload to the model just quantised (max abs logit diff {reload_diff:.3g}); "
                       f"report this with the checkpoint")
    float_bytes = saved_bytes({**kept,
                               "model": loaded.model.state_dict()})
    report: dict[str, Any] = {
        "checkpoint": str(loaded.path), "model_file": str(path), "method": provider.name,
        "options": recipe["options"], "plugin_version": __version__, "device": args.device,
        "size": {"float_bytes": float_bytes, "quantized_bytes": path.stat().st_size,
                 "ratio": path.stat().st_size / float_bytes, "source_checkpoint_bytes": loaded.path.stat().st_size},
        "reload_max_abs_logit_diff": reload_diff,
    }

    block = loaded.model.dims.block_size
    tokens = args.speed_tokens or max(32, min(256, 2 * block))
    if args.speed_rounds:
        speed = generation_speed({"float": loaded.model, provider.name: reloaded}, loaded.tokenizer,
                                 prompt=args.prompt, tokens=tokens, rounds=args.speed_rounds, device=args.device)
        report["speed"] = speed
    else:
        report["speed"] = None
    if eval_ids is not None:
        before = held_out_loss(loaded.model, eval_ids, args.device)
        after = held_out_loss(reloaded, eval_ids, args.device)
        report["eval"] = {"data": str(args.eval_data), "before": before, "after": after,
                          "loss_change": after["loss"] - before["loss"],
                          "perplexity_ratio": after["perplexity"] / before["perplexity"]}
    else:
        report["eval"] = None
    atomic_write(args.out / "report.json", lambda f: f.write((json.dumps(report, indent=2) + "\n").encode()))
    _print(report, args.out)
    return 0


def _eval_ids(args: argparse.Namespace, tokenizer: Any) -> np.ndarray:
    from apt import read_chunks

    ids: list[int] = []
    for chunk in read_chunks(args.eval_data, "auto", args.jsonl_field, "--eval-data"):
        ids.extend(tokenizer.encode(chunk))
    if len(ids) < 2:
        raise AptError(f"--eval-data {args.eval_data}: needs at least 2 tokens of text")
    return np.asarray(ids)


@torch.no_grad()
def _max_logit_diff(a: LanguageModel, b: LanguageModel, device: str) -> float:
    dims = a.dims
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, dims.vocab_size, (2, dims.block_size), generator=gen).to(device)
    return (a(x).logits.float() - b(x).logits.float()).abs().max().item()


def _print(report: dict[str, Any], out: Path) -> None:
    method, size = report["method"], report["size"]
    print(f"quantised {report['checkpoint']} with quant.{method} -> {report['model_file']}")
    print(f"size:  float {size['float_bytes']:,} bytes -> {method} {size['quantized_bytes']:,} bytes "
          f"({size['ratio']:.2f}x; the source checkpoint with optimizer state is {size['source_checkpoint_bytes']:,})")
    speed = report["speed"]
    if speed is None:
        print("speed: skipped (--speed-rounds 0)")
    else:
        med = speed["median_tokens_per_s"]
        print(f"speed: float {med['float']:,.0f} tokens/s -> {method} {med[method]:,.0f} tokens/s "
              f"({speed['ratio_vs_float'][method]:.2f}x, median of {speed['rounds']} interleaved rounds of "
              f"{speed['tokens']} sampled tokens, device {report['device']})")
    ev = report["eval"]
    if ev is None:
        print("eval:  skipped: no --eval-data given (pass a held-out text file to measure the perplexity change)")
    else:
        b, a = ev["before"], ev["after"]
        print(f"eval:  loss {b['loss']:.4f} -> {a['loss']:.4f} ({ev['loss_change']:+.4f}) | perplexity "
              f"{b['perplexity']:.3f} -> {a['perplexity']:.3f} ({(ev['perplexity_ratio'] - 1) * 100:+.2f}%) "
              f"on {b['tokens']:,} tokens of {ev['data']}")
    print(f"report: {out / 'report.json'} | run it: apt generate --checkpoint {out}")
