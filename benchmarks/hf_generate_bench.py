"""Cached greedy generation: ``apt.generate.sample`` vs Hugging Face ``GPT2LMHeadModel.generate(use_cache=True)``.

Model: the ``shakespeare_char`` shape (4 layers, 4 heads, d_model 128, 65 characters) with
``attention.sdpa``, freshly initialised, at block size 256 (so prompt + new tokens stay inside the
window of both). Its weights are copied into a ``GPT2LMHeadModel`` (exact GELU, zero biases:
APT's layers have none; HF's Conv1D stores weights transposed), and the two models' logits must
agree before anything is timed. From an 8-token prompt, 64 and 240 new tokens greedily; the two
generators alternate within each round on 1 thread, and ``apt_over_hf`` is the median of per-round
tokens/s ratios (``apt.paired_ratio``; above 1 means APT is faster). Each row also records whether
both produced the same tokens.
"""

from __future__ import annotations

import os
import time
from datetime import datetime, timezone
from typing import Any

import torch
from common import arguments, interleave, paired_ratio, write
from transformers import GPT2Config, GPT2LMHeadModel

from apt.generate import sample
from apt.model import LanguageModel, ModelBuilder
from apt.profile import load_profile
from apt.tokenizers import CharTokenizer

CHARS = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
PROMPT = "ROMEO:\nO"
LOGIT_TOLERANCE = 1e-4


def build_apt(block_size: int, vocab_size: int) -> LanguageModel:
    profile = load_profile("shakespeare_char", ["model.attention=sdpa", f"model.block_size={block_size}"])
    torch.manual_seed(0)
    return ModelBuilder(profile, vocab_size).build().model.eval()


def to_hf(model: LanguageModel) -> GPT2LMHeadModel:
    """A ``GPT2LMHeadModel`` computing the same function as ``model`` (an sdpa + dense FFN model)."""
    dims = model.dims
    settings: dict[str, Any] = {
        "vocab_size": dims.vocab_size, "n_positions": dims.block_size, "n_embd": dims.d_model,
        "n_layer": dims.n_layer, "n_head": dims.n_head, "n_inner": 4 * dims.d_model,
        "activation_function": "gelu", "layer_norm_epsilon": 1e-5, "resid_pdrop": 0.0, "embd_pdrop": 0.0,
        "attn_pdrop": 0.0, "bos_token_id": None, "eos_token_id": None, "pad_token_id": 0,
        "attn_implementation": "sdpa"}
    hf = GPT2LMHeadModel(GPT2Config(**settings)).eval()
    src = model.state_dict()
    dst: dict[str, torch.Tensor] = {"transformer.wte.weight": src["tok_emb.weight"],
                                    "transformer.wpe.weight": src["pos_emb.weight"],
                                    "transformer.ln_f.weight": src["ln_f.weight"]}
    for i in range(dims.n_layer):
        a, h = f"blocks.{i}.", f"transformer.h.{i}."
        dst |= {h + "ln_1.weight": src[a + "ln_1.weight"], h + "ln_2.weight": src[a + "ln_2.weight"],
                h + "attn.c_attn.weight": src[a + "attn.qkv.weight"].t(),
                h + "attn.c_proj.weight": src[a + "attn.proj.weight"].t(),
                h + "mlp.c_fc.weight": src[a + "mlp.fc.weight"].t(),
                h + "mlp.c_proj.weight": src[a + "mlp.proj.weight"].t()}
    with torch.no_grad():
        params = dict(hf.named_parameters())
        for name, param in params.items():
            if name in dst:
                param.copy_(dst[name])
            elif name.endswith(".bias"):
                param.zero_()
            elif name != "lm_head.weight":  # tied to wte
                raise KeyError(f"no APT weight for {name}")
        hf.lm_head.weight = hf.transformer.wte.weight
    return hf


@torch.no_grad()
def logit_gap(model: LanguageModel, hf: GPT2LMHeadModel) -> float:
    gen = torch.Generator().manual_seed(0)
    idx = torch.randint(0, model.dims.vocab_size, (2, model.dims.block_size), generator=gen)
    return (model(idx).logits - hf(input_ids=idx).logits).abs().max().item()


def main() -> None:
    p = arguments(__doc__.splitlines()[0])
    p.add_argument("--block", type=int, default=256, help="block size (>= prompt + new tokens)")
    p.add_argument("--new-tokens", default="64,240", help="generation lengths, comma-separated")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    started, load_at_start = datetime.now(timezone.utc).isoformat(timespec="seconds"), list(os.getloadavg())
    tokenizer = CharTokenizer(CHARS)
    model = build_apt(args.block, tokenizer.vocab_size)
    hf = to_hf(model)
    gap = logit_gap(model, hf)
    print(f"max |logit difference| APT vs HF: {gap:.2e}", flush=True)
    if gap > LOGIT_TOLERANCE:
        raise SystemExit(f"weights were not copied faithfully: logits differ by {gap:.2e} > {LOGIT_TOLERANCE}")
    prompt = torch.tensor([tokenizer.encode(PROMPT)])
    results: list[dict[str, Any]] = []
    for new in (int(n) for n in args.new_tokens.split(",")):
        if len(PROMPT) + new > args.block:
            raise SystemExit(f"prompt + {new} new tokens exceed block {args.block}")
        tokens: dict[str, list[int]] = {}

        def run_apt(new: int = new, tokens: dict[str, list[int]] = tokens) -> float:
            start = time.perf_counter()
            out = sample(model, tokenizer, PROMPT, max_new_tokens=new, temperature=0, use_cache=True)
            elapsed = time.perf_counter() - start
            tokens["apt"] = tokenizer.encode(out[0].text)
            return new / elapsed

        def run_hf(new: int = new, tokens: dict[str, list[int]] = tokens) -> float:
            start = time.perf_counter()
            with torch.no_grad():
                out = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new,
                                  min_new_tokens=new, do_sample=False, use_cache=True, pad_token_id=0)
            elapsed = time.perf_counter() - start
            tokens["hf"] = out[0, prompt.shape[1]:].tolist()
            return new / elapsed

        run_apt()
        run_hf()
        samples = interleave({"apt": run_apt, "hf": run_hf}, args.rounds)
        row = {"block_size": args.block, "prompt_tokens": len(PROMPT), "new_tokens": new,
               "tokens_per_s": {k: sorted(v)[len(v) // 2] for k, v in samples.items()},
               "apt_over_hf": paired_ratio(samples, "apt", "hf"),
               "identical_tokens": tokens["apt"] == tokens["hf"], "samples": samples}
        print(f"new {new:4}: apt {row['tokens_per_s']['apt']:8.1f} tok/s, hf {row['tokens_per_s']['hf']:8.1f} tok/s, "
              f"apt/hf {row['apt_over_hf']:.2f}x, identical {row['identical_tokens']}", flush=True)
        results.append(row)
    import transformers

    write(args.out, "hf_generate", {"started": started, "load_avg_at_start": load_at_start,
                                    "load_avg_at_end": list(os.getloadavg()), "rounds": args.rounds, "threads": args.threads, "attention": "sdpa",
                                    "transformers": transformers.__version__, "max_logit_difference": gap,
                                    "shape": {"n_layer": model.dims.n_layer, "n_head": model.dims.n_head,
                                              "d_model": model.dims.d_model, "vocab_size": model.dims.vocab_size},
                                    "results": results})


if __name__ == "__main__":
    main()
