"""Byte-level BPE tokenizer for APT (``tokenizer.bpe``) on Hugging Face ``tokenizers``."""

__version__ = "1.0.0"
