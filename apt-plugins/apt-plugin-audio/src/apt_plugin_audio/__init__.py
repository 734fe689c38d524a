"""Audio for APT: the ``encoder.logmel_conv`` provider (Whisper-style) and the ``spoken-digits`` dataset."""

__version__ = "1.0.0"
