"""Top-k mixture of experts (``router.topk_moe``) for APT."""

__version__ = "1.0.0"
