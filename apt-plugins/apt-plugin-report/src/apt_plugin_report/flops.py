"""Model FLOPs utilisation: how much of the device's matmul peak the measured throughput amounts to.

FLOPs per token follow the PaLM/nanoGPT estimate for a forward and backward pass: ``6N`` for the
weights plus ``12 * n_layer * d_model * block_size`` for attention scores and their use. The peak is
either the user's figure (a datasheet number) or a matmul benchmark on this machine at report time;
the page says which, because the two differ by design and an MFU is only as good as its peak.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

#: Square matmul sizes of the benchmark: big enough to reach the peak, small enough for a short run.
_BENCH_SIZE = {"cpu": 1024, "cuda": 4096}
_BENCH_SECONDS = 0.5


@dataclass(frozen=True)
class Peak:
    flops: float
    #: How the figure was obtained, shown next to every MFU.
    source: str


def flops_per_token(n_params: int, model: dict[str, Any]) -> float:
    """Training FLOPs per token of a model with ``n_params`` parameters and the profile's ``model`` section."""
    n_layer, d_model, block_size = (int(model.get(k, 0) or 0) for k in ("n_layer", "d_model", "block_size"))
    return 6.0 * n_params + 12.0 * n_layer * d_model * block_size


def given_peak(flops: float) -> Peak:
    return Peak(flops, f"given: --peak-flops {flops:.3g}")


def measured_peak(device: str = "auto", *, precision: str = "fp32", threads: int | None = None,
                  seconds: float = _BENCH_SECONDS) -> Peak:
    """Best sustained matmul rate on ``device`` in the run's precision (bf16/fp16 when it trained so).

    Runs once per report, for about ``seconds``; ``threads`` matches the run's ``train.threads`` so a
    CPU run is compared with the cores it was allowed to use.
    """
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    if dev.type == "cpu" and dtype == torch.float16:
        dtype = torch.float32
    n = _BENCH_SIZE.get(dev.type, _BENCH_SIZE["cuda"])
    previous_threads = torch.get_num_threads()
    if threads and dev.type == "cpu":
        torch.set_num_threads(threads)
    try:
        a = torch.randn(n, n, device=dev, dtype=dtype)
        b = torch.randn(n, n, device=dev, dtype=dtype)
        best = 0.0
        deadline = time.perf_counter() + seconds
        rounds = 0
        while rounds < 3 or time.perf_counter() < deadline:
            _sync(dev)
            started = time.perf_counter()
            (a @ b).sum().item()
            elapsed = time.perf_counter() - started
            best = max(best, 2.0 * n**3 / elapsed)
            rounds += 1
    finally:
        torch.set_num_threads(previous_threads)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    where = f"{name} with train.threads={threads}" if dev.type == "cpu" and threads else name
    return Peak(best, f"measured: best {n}x{n} {str(dtype).removeprefix('torch.')} matmul on {where} "
                      f"at report time (not a datasheet peak)")


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
