"""FlashAttention-2 (``attention.flash_v2``): the flash kernels on CUDA, the ``sdpa`` numerics everywhere."""

__version__ = "2.0.0"
