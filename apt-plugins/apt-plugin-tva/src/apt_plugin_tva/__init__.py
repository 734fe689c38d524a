"""Tri-Vein Attention (``attention.tva``), APT's default attention provider."""

__version__ = "2.0.0"
