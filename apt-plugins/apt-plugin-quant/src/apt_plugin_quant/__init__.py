"""Post-training quantisation (``quant.int8_dynamic``, ``quant.bf16``) and export for APT."""

__version__ = "1.0.0"
