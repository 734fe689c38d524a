"""Which flash kernel can run an input, decided per forward from the tensor itself.

Nothing here imports flash-attn at module import: the optional extra is looked up on first use
and the answer cached, because a failed import of a large CUDA extension is slow and would
otherwise be retried at every forward.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import torch

log = logging.getLogger("apt")

INSTALL_HINT = "pip install apt-plugin-flash[cuda]"
#: The largest head dim both flash-attn 2 and PyTorch's flash SDPA backend compile kernels for.
MAX_HEAD_DIM = 256


@functools.cache
def load_flash_attn() -> Callable[..., Any] | None:
    """``flash_attn.flash_attn_func``, or None when the extra is missing or its build does not load here."""
    try:
        from flash_attn import flash_attn_func
    except (ImportError, OSError, RuntimeError) as err:
        log.debug("flash-attn unavailable (%s); CUDA inputs use PyTorch's flash SDPA backend", err)
        return None
    return flash_attn_func


def flash_blocker(device: torch.device, dtype: torch.dtype, head_dim: int) -> str | None:
    """Why no flash kernel can take attention inputs of this device, dtype and head dim, or None.

    The reason doubles as the warning text: it names what is missing and how to get it.
    """
    if device.type != "cuda":
        return (f"attention.flash_v2: flash kernels need a CUDA GPU; running the sdpa path on {device.type} "
                f"(same numerics). On a CUDA machine `{INSTALL_HINT}` adds the flash-attn kernels.")
    if dtype not in (torch.float16, torch.bfloat16):
        return (f"attention.flash_v2: flash kernels take fp16/bf16 inputs, got {dtype}; running plain sdpa. "
                f"Set train.precision=bf16 (or fp16) to use them.")
    if head_dim % 8 or head_dim > MAX_HEAD_DIM:
        return (f"attention.flash_v2: flash kernels need a head dim that is a multiple of 8 up to {MAX_HEAD_DIM}, "
                f"got d_model/n_head = {head_dim}; running plain sdpa. Change model.n_head or model.d_model.")
    major, minor = _capability(device.index if device.index is not None else torch.cuda.current_device())
    if major < 8:
        return (f"attention.flash_v2: flash kernels need a GPU of compute capability 8.0 or newer (Ampere+), "
                f"this one is sm_{major}{minor}; running plain sdpa.")
    return None


@functools.cache
def warn_once(message: str) -> None:
    """Log ``message`` the first time only: a fallback is a fact about the run, not about each layer
    or step."""
    log.warning(message)


@functools.cache
def _capability(device_index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(device_index)
