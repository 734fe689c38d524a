"""The measuring half of ``benchmarks/gpu_check.sh``: bf16 training throughput + MFU and generation speed.

For each attention provider (sdpa, flash_v2, tva) a GPT-2-small-shaped model
(``benchmarks/gpt2_small.yaml``: 12 layers, 12 heads, d_model 768, block 1024) trains a few
dozen steps through ``Trainer.train_step`` in bf16 autocast; tokens/s is measured after warm-up
steps, MFU is model FLOPs per token (nanoGPT's estimate: 6N + 12 L d T) times tokens/s over the
device's peak dense bf16 FLOPs (a table by device name; a measured bf16 matmul rate where the
name is unknown, and ``peak_flops.source`` says which). Then the trained model generates greedily
with the KV cache and without it, interleaved rounds; ``speedup`` is the median per-round ratio.

``--dry-run`` does the same on the CPU at tiny sizes, so CI proves the whole path runs. The
results are one JSON file; ``--pytest-junit`` folds in the CUDA test results the shell script ran.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import math
import os
import platform
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from apt.generate import sample
from apt.model import LanguageModel
from apt.profile import load_profile
from apt.timing import interleave, paired_ratio
from apt.trainer import Trainer

PROFILE = Path(__file__).resolve().parent / "gpt2_small.yaml"
ATTENTIONS = ("sdpa", "flash_v2", "tva")
PROMPT = "ROMEO:\nO"

#: Dense (no sparsity) bf16 tensor-core peaks from the vendor data sheets, matched by substring of
#: ``torch.cuda.get_device_name()`` in this order (more specific names first).
PEAK_BF16: tuple[tuple[str, float], ...] = (
    ("GH200", 989e12), ("H200", 989e12), ("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12),
    ("H800", 989e12), ("B200", 2250e12), ("A100", 312e12), ("A800", 312e12), ("L40S", 362e12),
    ("L4", 121e12), ("RTX 4090", 165e12), ("A10G", 70e12), ("A10", 125e12),
)


@dataclass(frozen=True)
class Sizes:
    n_layer: int
    n_head: int
    d_model: int
    block_size: int
    batch_size: int
    warmup_steps: int
    steps: int
    new_tokens: int
    rounds: int
    matmul_n: int


FULL = Sizes(n_layer=12, n_head=12, d_model=768, block_size=1024, batch_size=16, warmup_steps=5, steps=30,
             new_tokens=256, rounds=3, matmul_n=8192)
DRY = Sizes(n_layer=2, n_head=2, d_model=64, block_size=64, batch_size=4, warmup_steps=1, steps=3,
            new_tokens=16, rounds=2, matmul_n=256)


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measured_matmul_flops(device: torch.device, n: int, repeat: int = 20) -> float:
    """Achieved FLOP/s of an ``n``-square bf16 matmul (best of three timings of ``repeat`` products)."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    a @ b
    sync(device)
    best = math.inf
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(repeat):
            a @ b
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 * repeat / best


def peak_flops(device: torch.device, matmul_n: int) -> dict[str, Any]:
    """The peak that MFU is measured against: the table's figure for this device, else the measured one."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    measured = measured_matmul_flops(device, matmul_n)
    table = next((flops for key, flops in PEAK_BF16 if key in name), None) if device.type == "cuda" else None
    if table is not None:
        return {"device_name": name, "value": table, "source": "table (dense bf16 data-sheet peak)",
                "measured_matmul": measured, "matmul_n": matmul_n}
    return {"device_name": name, "value": measured, "source": f"measured ({matmul_n}-square bf16 matmul)",
            "measured_matmul": measured, "matmul_n": matmul_n}


def flops_per_token(n_params: int, n_layer: int, d_model: int, block_size: int) -> float:
    """nanoGPT's ``estimate_mfu``: 6 per parameter (forward + backward) plus causal attention's 12 L d T."""
    return 6 * n_params + 12 * n_layer * d_model * block_size


def overrides(attention: str, sizes: Sizes, device: str, workdir: Path) -> list[str]:
    return [f"model.attention={attention}", f"model.n_layer={sizes.n_layer}", f"model.n_head={sizes.n_head}",
            f"model.d_model={sizes.d_model}", f"model.block_size={sizes.block_size}",
            f"train.batch_size={sizes.batch_size}", f"train.max_iters={sizes.warmup_steps + sizes.steps}",
            f"train.warmup_iters={sizes.warmup_steps}", f"train.device={device}", "train.precision=bf16",
            "logging.jsonl=false", "logging.progress=false", f"checkpoint.dir={workdir / attention}"]


def train(trainer: Trainer, sizes: Sizes, peak: float) -> dict[str, Any]:
    device = trainer.device
    for _ in range(sizes.warmup_steps):
        trainer.train_step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    start = time.perf_counter()
    losses = [trainer.train_step()["loss"] for _ in range(sizes.steps)]
    sync(device)
    elapsed = time.perf_counter() - start
    tokens_per_s = sizes.batch_size * sizes.block_size * sizes.steps / elapsed
    n_params = trainer.model.num_params()
    per_token = flops_per_token(n_params, sizes.n_layer, sizes.d_model, sizes.block_size)
    row: dict[str, Any] = {"params": n_params, "vocab_size": trainer.tokenizer.vocab_size,
                           "tokens_per_step": sizes.batch_size * sizes.block_size, "steps": sizes.steps,
                           "seconds": elapsed, "tokens_per_s": tokens_per_s, "ms_per_step": 1e3 * elapsed / sizes.steps,
                           "flops_per_token": per_token, "mfu": per_token * tokens_per_s / peak,
                           "first_loss": losses[0], "last_loss": losses[-1]}
    if device.type == "cuda":
        row["max_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return row


def generate(trainer: Trainer, sizes: Sizes) -> dict[str, Any]:
    """Greedy tokens/s with and without the KV cache, interleaved, for the fp32 weights as trained and
    a bf16 copy (the dtype flash kernels take)."""
    tokenizer, device = trainer.tokenizer, trainer.device
    rows: dict[str, Any] = {}
    for dtype_name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        model = trainer.model.eval() if dtype == torch.float32 else copy.deepcopy(trainer.model).to(dtype).eval()
        texts: dict[str, str] = {}

        def run(use_cache: bool, model: LanguageModel = model, texts: dict[str, str] = texts) -> float:
            sync(device)
            start = time.perf_counter()
            out = sample(model, tokenizer, PROMPT, max_new_tokens=sizes.new_tokens, temperature=0,
                         device=str(device), use_cache=use_cache)
            sync(device)
            texts["cache" if use_cache else "recompute"] = out[0].text
            return sizes.new_tokens / (time.perf_counter() - start)

        variants: dict[str, Callable[[], float]] = {"cache": functools.partial(run, True),
                                                    "recompute": functools.partial(run, False)}
        for fn in variants.values():
            fn()
        samples = interleave(variants, sizes.rounds)
        rows[dtype_name] = {"prompt_tokens": len(tokenizer.encode(PROMPT)), "new_tokens": sizes.new_tokens,
                            "rounds": sizes.rounds,
                            "tokens_per_s": {k: sorted(v)[len(v) // 2] for k, v in samples.items()},
                            "speedup": paired_ratio(samples, "cache", "recompute"),
                            "identical_text": texts["cache"] == texts["recompute"], "samples": samples}
        del model
    return rows


def flash_kernel() -> str:
    """Which kernel ``attention.flash_v2`` runs on this machine."""
    if not torch.cuda.is_available():
        return "cpu fallback (torch SDPA)"
    try:
        from apt_plugin_flash.kernels import load_flash_attn

        return "flash-attn package" if load_flash_attn() is not None else "torch flash SDPA backend"
    except Exception as err:  # recorded, not fatal
        return f"unknown ({type(err).__name__}: {err})"


def junit_summary(spec: str) -> dict[str, Any]:
    """``NAME=PATH=EXIT_STATUS`` of one pytest run: its counts and the outcome of every test."""
    name, path_text, rc = spec.rsplit("=", 2)
    path = Path(path_text)
    if not path.exists():
        return {"name": name, "ran": False, "exit_status": int(rc), "error": f"no report at {path}"}
    root = ET.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    assert suite is not None
    counts = {key: int(suite.get(key, "0")) for key in ("tests", "failures", "errors", "skipped")}
    cases = [{"name": f"{case.get('classname')}::{case.get('name')}",
              "outcome": next((child.tag for child in case if child.tag in ("failure", "error", "skipped")), "passed")}
             for case in suite.iter("testcase")]
    return {"name": name, "ran": True, "exit_status": int(rc), **counts, "passed": counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"],
            "cases": cases}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="JSON file to write")
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes: proves the path runs")
    p.add_argument("--attentions", default=",".join(ATTENTIONS), help="providers, comma-separated")
    p.add_argument("--pytest-junit", action="append", default=[], metavar="NAME=XML=RC",
                   help="a CUDA test run to include: name, JUnit XML path, pytest exit status (repeatable)")
    args = p.parse_args()
    started, load_at_start = now(), list(os.getloadavg())
    sizes = DRY if args.dry_run else FULL
    if args.dry_run:
        device = torch.device("cpu")
        torch.set_num_threads(min(2, os.cpu_count() or 1))
    else:
        if not torch.cuda.is_available():
            raise SystemExit("gpu_check: no CUDA device (use --dry-run on a CPU)")
        device = torch.device("cuda")
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    peak = peak_flops(device, sizes.matmul_n)
    print(f"peak bf16: {peak['value'] / 1e12:.1f} TFLOP/s ({peak['source']}); "
          f"measured matmul {peak['measured_matmul'] / 1e12:.1f} TFLOP/s", flush=True)
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        for attention in args.attentions.split(","):
            row: dict[str, Any] = {"started": now()}
            try:
                profile = load_profile(str(PROFILE), overrides(attention, sizes, device.type, Path(tmp)))
                trainer = Trainer(profile, echo=lambda s: None)
                row["train"] = train(trainer, sizes, peak["value"])
                print(f"{attention:8} train: {row['train']['tokens_per_s']:12.0f} tok/s, "
                      f"MFU {100 * row['train']['mfu']:5.1f}%", flush=True)
                row["generate"] = generate(trainer, sizes)
                for dtype_name, gen in row["generate"].items():
                    print(f"{attention:8} generate {dtype_name}: cache {gen['tokens_per_s']['cache']:8.1f} tok/s, "
                          f"recompute {gen['tokens_per_s']['recompute']:8.1f} tok/s, speedup {gen['speedup']:.2f}x, "
                          f"identical {gen['identical_text']}", flush=True)
                del trainer
            except Exception as err:  # one provider failing must not lose the others' figures
                row["error"] = f"{type(err).__name__}: {err}"
                print(f"{attention:8} FAILED: {row['error']}", flush=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
            row["finished"] = now()
            results[attention] = row
    tests = [junit_summary(spec) for spec in args.pytest_junit]
    payload = {"benchmark": "gpu_check", "dry_run": args.dry_run, "started": started, "finished": now(),
               "device": str(device), "device_name": peak["device_name"], "torch": torch.__version__,
               "cuda": torch.version.cuda, "python": platform.python_version(), "cpus": os.cpu_count(),
               "load_avg_at_start": load_at_start,
               "load_avg_at_end": list(os.getloadavg()), "flash_v2_kernel": flash_kernel(), "precision": "bf16 autocast",
               "mfu_note": "model FLOPs per token 6N + 12 L d T (nanoGPT's estimate, softmax attention) for every "
                           "provider; N counts the provider's own parameters, so tva's MFU is comparable only as "
                           "tokens/s",
               "sizes": asdict(sizes), "peak_flops": peak, "cuda_tests": tests, "attention": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = args.out.with_suffix(".tmp")
    tmp_out.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp_out, args.out)
    print(f"wrote {args.out}")
    failed = [name for name, row in results.items() if "error" in row]
    if failed:
        raise SystemExit(f"gpu_check: failed for {', '.join(failed)}")


if __name__ == "__main__":
    main()
