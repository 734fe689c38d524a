"""Training throughput: apt's Trainer (sdpa, tva) vs a plain-PyTorch GPT of identical shape.

Each variant runs forward + backward + AdamW steps on 2 threads; apt variants go through
``Trainer.train_step`` so the framework's per-step work (hooks, schedule, metrics, batch
sampling) is inside the measurement. The reference samples its batches the same way.
Variants are interleaved in one process; ratios are medians of per-round ratios.
"""

from __future__ import annotations

import tempfile

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common import arguments, interleave, paired_ratio, write

from apt.profile import load_profile
from apt.trainer import Trainer

SHAPE = {"n_layer": 4, "n_head": 4, "d_model": 128}


class RefAttention(nn.Module):
    def __init__(self, d: int, h: int) -> None:
        super().__init__()
        self.h = h
        self.c_attn = nn.Linear(d, 3 * d, bias=False)
        self.c_proj = nn.Linear(d, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.h, C // self.h).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class RefBlock(nn.Module):
    def __init__(self, d: int, h: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(d, bias=False)
        self.attn = RefAttention(d, h)
        self.ln_2 = nn.LayerNorm(d, bias=False)
        self.fc = nn.Linear(d, 4 * d, bias=False)
        self.proj = nn.Linear(4 * d, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.proj(F.gelu(self.fc(self.ln_2(x))))


class RefGPT(nn.Module):
    """nanoGPT's model, written out plainly: the yardstick for framework overhead."""

    def __init__(self, vocab: int, block: int, n_layer: int, n_head: int, d_model: int) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab, d_model)
        self.wpe = nn.Embedding(block, d_model)
        self.blocks = nn.ModuleList(RefBlock(d_model, n_head) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d_model, bias=False)
        self.head = nn.Linear(d_model, vocab, bias=False)
        self.head.weight = self.wte.weight

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


def adamw(model: nn.Module) -> torch.optim.Optimizer:
    params = list(model.parameters())
    return torch.optim.AdamW([{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
                              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
                             lr=1e-3, betas=(0.9, 0.99))


def training_step(model: nn.Module, loss_of, tokens: np.ndarray, block: int, batch: int):
    """One sampled batch, forward, backward, clip and AdamW step: the same loop for every peer."""
    opt = adamw(model)
    gen = torch.Generator().manual_seed(0)

    def step() -> None:
        offsets = torch.randint(0, len(tokens) - block - 1, (batch,), generator=gen).numpy()
        chunk = torch.from_numpy(np.asarray(tokens[offsets[:, None] + np.arange(block + 1)], dtype=np.int64))
        loss = loss_of(chunk)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()

    return step


def reference_runner(tokens: np.ndarray, vocab: int, block: int, batch: int, steps: int):
    torch.manual_seed(0)
    model = RefGPT(vocab, block, **SHAPE)

    def loss_of(chunk: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(chunk[:, :-1]).view(-1, vocab), chunk[:, 1:].reshape(-1))

    return _rate(training_step(model, loss_of, tokens, block, batch), batch * block, steps)


def hf_runner(tokens: np.ndarray, vocab: int, block: int, batch: int, steps: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=vocab, n_positions=block, n_embd=SHAPE["d_model"], n_layer=SHAPE["n_layer"],
                        n_head=SHAPE["n_head"], resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        attn_implementation="sdpa")
    model = GPT2LMHeadModel(config)
    model.train()

    def loss_of(chunk: torch.Tensor) -> torch.Tensor:
        return model(input_ids=chunk[:, :-1], labels=chunk[:, :-1]).loss

    return _rate(training_step(model, loss_of, tokens, block, batch), batch * block, steps)


def apt_runner(attention: str, block: int, batch: int, steps: int, extra: list[str] = ()):
    profile = load_profile("shakespeare_char", [
        f"model.attention={attention}", f"model.block_size={block}", f"train.batch_size={batch}",
        "train.threads=2", "logging.jsonl=false", "logging.progress=false", f"checkpoint.dir={tempfile.mkdtemp()}",
        *extra])
    trainer = Trainer(profile, echo=lambda s: None)
    return trainer, _rate(lambda: trainer.train_step(), batch * block, steps)


def _rate(step, tokens_per_step: int, steps: int):
    import time

    step()

    def measure() -> float:
        start = time.perf_counter()
        for _ in range(steps):
            step()
        return tokens_per_step * steps / (time.perf_counter() - start)

    return measure


def main() -> None:
    p = arguments(__doc__)
    p.add_argument("--no-hf", action="store_true", help="leave out the transformers GPT-2 peer")
    args = p.parse_args()
    torch.set_num_threads(2)
    results: dict[str, object] = {"shape": SHAPE, "threads": 2, "rounds": args.rounds, "comparisons": {}}
    try:
        import transformers  # noqa: F401
        have_hf = not args.no_hf
    except ImportError:
        have_hf = False
    for block, batch, steps in ((64, 12, 20), (1024, 4, 2)):
        trainer, apt_sdpa = apt_runner("sdpa", block, batch, steps)
        tokens, vocab = trainer.corpus.train, trainer.tokenizer.vocab_size
        variants = {"reference": reference_runner(tokens, vocab, block, batch, steps), "apt_sdpa": apt_sdpa,
                    "apt_tva_r4": apt_runner("tva", block, batch, steps)[1]}
        if block == 1024:
            variants["apt_tva_r4_k16"] = apt_runner("tva", block, batch, steps,
                                                    ["providers.attention.tva.kernel_dim=16"])[1]
        if have_hf:
            variants["hf_gpt2"] = hf_runner(tokens, vocab, block, batch, steps)
        samples = interleave(variants, args.rounds)
        ratios = {f"{name}_vs_reference": paired_ratio(samples, name, "reference") for name in variants
                  if name != "reference"}
        ratios["apt_tva_r4_vs_apt_sdpa"] = paired_ratio(samples, "apt_tva_r4", "apt_sdpa")
        if have_hf:
            ratios["apt_sdpa_vs_hf_gpt2"] = paired_ratio(samples, "apt_sdpa", "hf_gpt2")
        results["comparisons"][f"block_{block}"] = {
            "batch": batch, "steps_per_sample": steps,
            "median_tokens_per_s": {k: round(float(np.median(v))) for k, v in samples.items()},
            "ratios": {k: round(v, 4) for k, v in ratios.items()},
            "samples_tokens_per_s": {k: [round(x) for x in v] for k, v in samples.items()},
        }
    block64 = results["comparisons"]["block_64"]["ratios"]
    block1024 = results["comparisons"]["block_1024"]["ratios"]
    results["targets"] = {
        "apt_sdpa >= 0.97x reference (block 64)": block64["apt_sdpa_vs_reference"] >= 0.97,
        "tva r=4 faster than sdpa at block 1024": block1024["apt_tva_r4_vs_apt_sdpa"] > 1.0,
    }
    if have_hf:
        results["targets"]["apt_sdpa >= 1.15x hf gpt2 (block 64)"] = block64["apt_sdpa_vs_hf_gpt2"] >= 1.15
    write(args.out, "kernel_throughput", results)


if __name__ == "__main__":
    main()
