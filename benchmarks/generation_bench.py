"""Generation speed with the KV cache vs full recompute (``apt.generate.sample``, greedy, one row).

Model: the ``shakespeare_char`` shape (4 layers, 4 heads, d_model 128, 65 characters), freshly
initialised (speed does not depend on the weights), with ``attention.sdpa`` and ``attention.tva``
(the profile's r 8, s 2), at the profile's block size 64 and at 1024. From an 8-token prompt,
64 and 512 new tokens; cache and recompute alternate within each round on 2 threads, and the
speedup is the median of per-round ratios (``apt.paired_ratio``).

The sliding rule decides what to expect: up to the block size the cache costs one token a step;
past it every step re-encodes the last ``block_size`` tokens (the only computation identical to
recompute with learned absolute positions), so at block 64 most of 512 tokens cost as much as
without the cache, while at block 1024 all of them stay inside the window. Each configuration
also records whether both paths produced the same text.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from common import arguments, interleave, paired_ratio, write

from apt.generate import sample
from apt.model import LanguageModel, ModelBuilder
from apt.profile import load_profile
from apt.tokenizers import CharTokenizer

CHARS = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
PROMPT = "ROMEO:\nO"


def build(attention: str, block_size: int, vocab_size: int) -> LanguageModel:
    profile = load_profile("shakespeare_char", [f"model.attention={attention}", f"model.block_size={block_size}"])
    torch.manual_seed(0)
    return ModelBuilder(profile, vocab_size).build().model.eval()


def main() -> None:
    p = arguments(__doc__.splitlines()[0])
    p.add_argument("--blocks", default="64,1024", help="block sizes, comma-separated")
    p.add_argument("--new-tokens", default="64,512", help="generation lengths, comma-separated")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    tokenizer = CharTokenizer(CHARS)
    results: list[dict[str, Any]] = []
    for attention in ("sdpa", "tva"):
        for block in (int(b) for b in args.blocks.split(",")):
            model = build(attention, block, tokenizer.vocab_size)
            for new in (int(n) for n in args.new_tokens.split(",")):
                texts: dict[str, str] = {}

                def run(use_cache: bool, new: int = new, model: LanguageModel = model,
                        texts: dict[str, str] = texts) -> float:
                    start = time.perf_counter()
                    out = sample(model, tokenizer, PROMPT, max_new_tokens=new, temperature=0, use_cache=use_cache)
                    elapsed = time.perf_counter() - start
                    texts["cache" if use_cache else "recompute"] = out[0].text
                    return new / elapsed

                run(True)
                run(False)
                samples = interleave({"cache": lambda: run(True), "recompute": lambda: run(False)}, args.rounds)
                row = {"attention": attention, "block_size": block, "prompt_tokens": len(PROMPT),
                       "new_tokens": new, "tokens_per_s": {k: sorted(v)[len(v) // 2] for k, v in samples.items()},
                       "speedup": paired_ratio(samples, "cache", "recompute"),
                       "identical_text": texts["cache"] == texts["recompute"], "samples": samples}
                print(f"{attention:5} block {block:5} new {new:4}: cache {row['tokens_per_s']['cache']:8.1f} tok/s, "
                      f"recompute {row['tokens_per_s']['recompute']:8.1f} tok/s, speedup {row['speedup']:.2f}x, "
                      f"identical {row['identical_text']}", flush=True)
                results.append(row)
    write(args.out, "generation_bench", {"rounds": args.rounds, "threads": args.threads, "results": results})


if __name__ == "__main__":
    main()
