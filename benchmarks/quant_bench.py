"""Post-training quantisation (apt-plugin-quant): size, generation speed and held-out loss vs fp32.

Models, all character-level on tinyshakespeare (``SHARED_DATA``, its last 10% held out):

* ``shakespeare_char_sdpa``: the shakespeare_char profile (4 layers, d_model 128, block 64) with
  ``model.attention=sdpa`` (the override its comment documents), trained briefly through apt's Trainer;
* ``shakespeare_char_tva``: the profile as shipped (Tri-Vein attention), trained the same way; int8_dynamic
  quantises its inference form (``TriVeinAttention.inference_form()``: the veins folded into plain
  nn.Linear projections once), so its int8 row also runs the folded layer while fp32 re-folds per forward;
* ``gpt_20m``: 6 layers, d_model 512, 8 heads, block 256, sdpa (about 19M parameters), short-trained.

Per model and method: saved bytes of the model file (``apt quantize``'s format; fp32 = the same file
without the quant recipe), tokens/s of ``apt.generate.sample`` with a full block-size prompt (every
step runs a whole block), interleaved fp32/int8/bf16 rounds on 2 threads with medians of paired
ratios, and the mean loss on held-out tokens. A torch.profiler table of one full-block forward says
which ops dominate on the 20M model.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common import SHARED_DATA, arguments, interleave, paired_ratio, write

from apt import checkpoint as ckpt
from apt.errors import AptError
from apt.generate import evaluate_tokens, sample
from apt.profile import load_profile
from apt.registry import default_registry
from apt.trainer import Trainer

METHODS = ("int8_dynamic", "bf16")
SMALL = {"name": "shakespeare_char_sdpa", "sets": ["model.attention=sdpa"]}
TVA = {"name": "shakespeare_char_tva", "sets": []}
BIG = {"name": "gpt_20m", "sets": ["model.attention=sdpa", "model.n_layer=6", "model.d_model=512", "model.n_head=8",
                                   "model.block_size=256", "train.batch_size=4", "train.lr=2e-3", "train.min_lr=2e-4"]}


def train(spec: dict[str, Any], steps: int, workdir: Path) -> tuple[Trainer, float]:
    profile = load_profile("shakespeare_char", [
        *spec["sets"], f"data.train_path={SHARED_DATA}", "train.threads=2", f"train.max_iters={max(steps, 1)}",
        f"train.lr_decay_iters={max(steps, 1)}", f"train.warmup_iters={max(1, min(100, steps // 10))}",
        f"train.eval_interval={max(steps, 1)}", "train.eval_iters=4", "logging.jsonl=false",
        "logging.progress=false", "logging.tensorboard=false", f"checkpoint.dir={workdir / spec['name']}",
        f"checkpoint.every={max(steps, 1)}"])
    trainer = Trainer(profile, echo=lambda s: None)
    start = time.perf_counter()
    if steps:
        trainer.run()
    return trainer, time.perf_counter() - start


def saved_bytes(workdir: Path, name: str, trainer: Trainer, model: torch.nn.Module, recipe: dict | None) -> int:
    state = {"step": trainer.step, "profile": trainer.profile.to_dict(), "providers": trainer.built.providers,
             "tokenizer": trainer.tokenizer.state(), "model": model.state_dict()}
    if recipe:
        state["quant"] = recipe
    return ckpt.save_file(workdir / name / "model.pt", state).stat().st_size


def measure(spec: dict[str, Any], steps: int, workdir: Path, rounds: int, new_tokens: int, eval_tokens: int,
            profile_ops: bool) -> dict[str, Any]:
    """Train (or not), quantise with each method, then size, held-out loss and interleaved tokens/s."""
    trainer, train_s = train(spec, steps, workdir)
    model = trainer.model.eval()
    dims = model.dims
    tokenizer = trainer.tokenizer
    val = np.asarray(trainer.corpus.val[: eval_tokens + 1], dtype=np.int64)
    prompt = tokenizer.decode(val[: dims.block_size].tolist())
    out: dict[str, Any] = {
        "params": sum(p.numel() for p in model.parameters()),
        "shape": {"n_layer": dims.n_layer, "n_head": dims.n_head, "d_model": dims.d_model,
                  "block_size": dims.block_size, "vocab_size": dims.vocab_size},
        "attention": trainer.built.providers["attention"]["name"],
        "weights": (f"trained {steps} steps (batch {trainer.profile.train.batch_size}) on tinyshakespeare with apt's "
                    f"Trainer in {train_s:.0f}s" if steps else "untrained (random init)"),
        "eval_tokens": int(len(val) - 1),
    }
    variants: dict[str, torch.nn.Module] = {"fp32": model}
    out["size_bytes"] = {"fp32": saved_bytes(workdir, f"{spec['name']}_fp32", trainer, model, None)}
    for method in METHODS:
        provider = default_registry().make("quant", method, {})
        try:
            quantized = provider.apply(model)
        except AptError as err:
            out.setdefault("refused", {})[method] = str(err)
            continue
        variants[method] = quantized
        recipe = {"method": method, "options": {}, "plugin_version": "1.0.0"}
        out["size_bytes"][method] = saved_bytes(workdir, f"{spec['name']}_{method}", trainer, quantized, recipe)
    out["size_ratio_vs_fp32"] = {m: round(b / out["size_bytes"]["fp32"], 4) for m, b in out["size_bytes"].items()
                                 if m != "fp32"}

    losses = {name: evaluate_tokens(m, val, batch_size=16)[0] for name, m in variants.items()}
    out["val_loss"] = {name: round(loss, 5) for name, loss in losses.items()}
    out["val_loss_change"] = {name: round(loss - losses["fp32"], 5) for name, loss in losses.items() if name != "fp32"}

    def runner(m: torch.nn.Module):
        def once() -> float:
            start = time.perf_counter()
            sample(m, tokenizer, prompt, max_new_tokens=new_tokens, temperature=0.8, top_k=200, seed=1337)
            return new_tokens / (time.perf_counter() - start)
        once()  # warm-up
        return once

    samples = interleave({name: runner(m) for name, m in variants.items()}, rounds)
    out["generation"] = {"prompt_tokens": dims.block_size, "new_tokens": new_tokens, "rounds": rounds}
    out["tokens_per_s_median"] = {name: round(statistics.median(s), 2) for name, s in samples.items()}
    out["tokens_per_s_ratio_vs_fp32"] = {name: round(paired_ratio(samples, name, "fp32"), 4) for name in samples
                                         if name != "fp32"}
    out["samples_tokens_per_s"] = {name: [round(x, 2) for x in s] for name, s in samples.items()}
    if profile_ops:
        x = torch.from_numpy(val[: dims.block_size]).unsqueeze(0)
        out["profile_one_block_forward"] = {name: top_ops(m, x) for name, m in variants.items()}
    return out


def top_ops(model: torch.nn.Module, x: torch.Tensor, k: int = 8) -> list[dict[str, Any]]:
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad():
        model(x)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(3):
                model(x)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1
    return [{"op": e.key, "self_cpu_share": round(e.self_cpu_time_total / total, 4),
             "self_cpu_ms_per_forward": round(e.self_cpu_time_total / 3 / 1000, 3)} for e in events[:k]]


def main() -> None:
    p = arguments(__doc__)
    p.add_argument("--small-steps", type=int, default=300, help="training steps of the shakespeare_char models")
    p.add_argument("--big-steps", type=int, default=40, help="training steps of the 20M model (0: untrained)")
    p.add_argument("--eval-tokens", type=int, default=8192, help="held-out tokens scored per variant "
                                                                   "(half of it on the 20M model)")
    args = p.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    results: dict[str, Any] = {
        "threads": 2, "rounds": args.rounds, "data": str(SHARED_DATA.name), "load_avg_at_start": os.getloadavg(),
        "note": ("2 shared cores: while a neighbour keeps them busy, every 2-thread parallel region waits for a "
                 "core, which inflates small ops (layer norm, adds, attention at batch 1) far beyond their FLOPs; "
                 "compare the paired ratios, and read them with load_avg_at_start / load_avg_at_end (machine's "
                 "load_avg_at_start is taken when the results are written)"),
        "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        # (model, training steps, new tokens per speed sample, held-out tokens, profile the ops)
        plan = ((SMALL, args.small_steps, 64, args.eval_tokens, False),
                (TVA, args.small_steps, 16, args.eval_tokens, False),
                (BIG, args.big_steps, 16, args.eval_tokens // 2, True))
        for spec, steps, new_tokens, eval_tokens, profile_ops in plan:
            start = time.perf_counter()
            results["models"][spec["name"]] = measure(spec, steps, workdir, args.rounds, new_tokens, eval_tokens,
                                                      profile_ops)
            results["models"][spec["name"]]["seconds"] = round(time.perf_counter() - start)
            print(f"{spec['name']}: {time.perf_counter() - start:.0f}s", flush=True)
    results["load_avg_at_end"] = os.getloadavg()
    big = results["models"][BIG["name"]]
    results["targets"] = {
        "int8_dynamic >= 2x fp32 tokens/s (20M model)": big["tokens_per_s_ratio_vs_fp32"]["int8_dynamic"] >= 2.0,
        "int8_dynamic val-loss change <= +0.02 (20M model)": big["val_loss_change"]["int8_dynamic"] <= 0.02,
        "int8_dynamic val-loss change <= +0.02 (shakespeare_char sdpa)":
            results["models"][SMALL["name"]]["val_loss_change"]["int8_dynamic"] <= 0.02,
        "bf16 val-loss change <= +0.02 (all models)":
            all(m["val_loss_change"]["bf16"] <= 0.02 for m in results["models"].values()),
    }
    write(args.out, "quant_bench", results)


if __name__ == "__main__":
    main()
