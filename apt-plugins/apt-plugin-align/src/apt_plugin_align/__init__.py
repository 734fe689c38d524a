"""Bistate alignment (``align.bistate``): an auxiliary loss that pulls a second view of the model
towards the detached states of its normal forward pass."""

__version__ = "2.0.0"
